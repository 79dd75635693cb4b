"""``python -m course setup | lab | test | wheelhouse | list | doctor | build | bench | run | dry-run | pack | unpack | labels | memory``

``setup``, ``lab`` and ``test`` are the Makefile's targets for machines without ``make`` (Windows):
they need only the Python that runs them, and use the course's environment in ``.venv``.
"""

from __future__ import annotations

import argparse
import sys

from course import manifest


def _selected(keys: list[str]) -> list[manifest.Lesson]:
    lessons = [manifest.find(k) for k in keys] if keys else manifest.available_lessons()
    missing = [l.filename for l in lessons if not l.available]
    if missing:
        raise SystemExit(f"Not written yet: {', '.join(missing)}")
    return lessons


def cmd_setup(args) -> int:
    from pathlib import Path

    from course.environment import VENV, setup

    setup(Path(args.venv) if args.venv else VENV, torch_index=args.torch_index, force=args.force, wheels=args.wheels,
          latest=args.latest, torch_spec=args.torch_spec)
    return 0


def cmd_wheelhouse(args) -> int:
    import subprocess
    from pathlib import Path

    from course.environment import wheelhouse_commands

    folder = Path(args.output)
    for command in wheelhouse_commands(folder, args.platform):
        print("$", " ".join(command[1:7]), "...", flush=True)
        subprocess.run(command, check=True)
    wheels = sorted(folder.rglob("*.whl"))
    print(f"{len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 1e9:.2f} GB in {folder}. "
          f"On each machine, with no network: make setup WHEELS={folder}"
          + ("/<platform>" if args.platform else "") + " (or python -m course setup --wheels ...)")
    return 0


def cmd_lab(args) -> int:
    from course import lab
    from course.environment import setup

    setup(torch_index=args.torch_index)
    return lab.main(ip=args.ip, port=args.port, open_browser=False if args.no_browser else None)


def cmd_test(args) -> int:
    from course.environment import run_tests, setup

    setup(torch_index=args.torch_index)
    return run_tests(paths=tuple(args.paths) or ("tests", "lessons", "solutions"))


def cmd_labels(args) -> int:
    """A workshop's lesson-05 labels or lesson-07 arena votes: export yours, merge the room's, report."""
    from pathlib import Path

    from rlhf_helpers import preferences, room

    votes = args.command == "votes"
    check = room.vote_problem if votes else preferences.row_problem
    if args.action == "export":
        annotator = args.id or room.anonymous_id()
        destination = Path(args.output or f"{args.command}-{annotator}.jsonl")
        source = room.votes_path() if votes else preferences.labels_path()
        written, problems = room.export_labels(source, destination, annotator, check)
        print(f"{written} {args.command} written to {destination} as annotator {annotator!r}.")
        for problem in problems:
            print(f"  skipped {problem}")
        return 0
    if not args.files or (args.action == "merge" and not args.output):
        raise SystemExit(f"usage: python -m course {args.command} merge FILE... -o MERGED  |  "
                         f"{args.command} report MERGED")
    if args.action == "merge":
        report = room.merge([Path(f) for f in args.files], Path(args.output), check)
        print(f"{args.output}: {report.summary()}.".replace(" labels from", f" {args.command} from"))
        for problem in report.problems:
            print(f"  bad row: {problem}")
        if report.problems:
            print(f"  (kept verbatim in {args.output}.rejected)")
        if not votes:
            print(f"Train on them: RLHF_LABELS={Path(args.output).resolve()}")
        return 0
    if votes:
        from rlhf_helpers import arena

        rows = room.human_and_simulated_elo(Path(args.files[0]), arena.load_arena()["battles"])
        print(f"{'model':>12} {'human Elo':>10} {'simulated Elo':>14} {'votes':>6}")
        for name, human, simulated, count in rows:
            print(f"{name:>12} {'-' if human is None else f'{human:.0f}':>10} {simulated:>14.0f} {count:>6}")
        return 0
    print(room.room_report(Path(args.files[0]), tau=args.tau).text())
    return 0


def cmd_pack(args) -> int:
    from pathlib import Path

    from course.pack import pack

    archive = pack(Path(args.output), profile=args.profile)
    print(f"Wrote {archive} ({archive.stat().st_size / 1e6:.1f} MB). On each laptop: python -m course unpack {archive.name}")
    return 0


def cmd_unpack(args) -> int:
    from pathlib import Path

    from course.pack import unpack

    installed = unpack(Path(args.archive), profile=args.profile, force=args.force)
    print(f"Installed {len(installed)} artifacts" + (": " + ", ".join(installed) if installed else
                                                    " (every one was already here)") + ".")
    return 0


def cmd_site(args) -> int:
    from pathlib import Path

    from course.site import build_site

    pages = build_site(Path(args.output))
    print(f"{len(pages)} pages in {args.output}/; open {Path(args.output) / 'index.html'} in a browser (no server needed).")
    return 0


def cmd_run(args) -> int:
    from course.run import run

    run(args.stage, profile=args.profile, sizes=args.set, model=args.model)
    return 0


def cmd_dry_run(args) -> int:
    """Every stage at a profile's shapes for a handful of steps (course/dry_run.py); exit 1 on a problem."""
    from pathlib import Path

    from course.dry_run import dry_run

    problems = dry_run(args.profile, sizes=args.set, folder=Path(args.artifacts) if args.artifacts else None,
                       model=args.model)
    return 1 if problems else 0


def cmd_memory(args) -> int:
    """The GPU memory each stage needs (course/memory.py); ``--readme`` writes it into README.md."""
    from course import memory
    from rlhf_helpers.env import PROFILES
    from rlhf_helpers.tokenizers import COURSE_VOCAB_SIZE

    table = memory.markdown_table(PROFILES, COURSE_VOCAB_SIZE)
    if args.readme:
        memory.write_readme_table(table)
        print("README.md's memory table is current.")
    else:
        print(table)
    return 0


def cmd_list(args) -> int:
    print(f"{'#':<3} {'lesson':<46} {'CPU min':>7} {'GPU min':>7}  status")
    for l in manifest.LESSONS:
        print(f"{l.id:<3} {l.title:<46} {l.minutes_cpu:>7} {l.minutes_gpu:>7}  "
              f"{'ready: lessons/' + l.filename if l.available else 'coming soon'}")
        if args.verbose:
            for objective in l.objectives:
                print(f"      - {objective}")
    return 0


def cmd_doctor(args) -> int:
    from course.doctor import main

    return main()


def cmd_build(args) -> int:
    from course.build import build, check

    lessons = _selected(args.lessons)
    if args.check:
        problems = check(lessons)
        for problem in problems:
            print("✗", problem)
        print("lessons/ is current with solutions/." if not problems else f"{len(problems)} problem(s).")
        return 1 if problems else 0
    build(lessons, execute_notebooks=not args.no_execute)
    return 0


def cmd_bench(args) -> int:
    from course.bench import bench
    from rlhf_helpers.env import get_profile

    bench(_selected(args.lessons), get_profile(args.profile).name)
    return 0


BEFORE_INSTALL = ("setup", "lab", "test", "wheelhouse", "list")  # commands that need the standard library only
REEXEC_VAR = "RLHF_COURSE_REEXEC"  # set in the child, so a broken .venv cannot start itself forever


def in_course_environment(argv: list[str], venv=None) -> int | None:
    """Run ``python -m course ...`` in the course's environment when this Python lacks its packages.

    The README writes ``python -m course run ppo``; a learner's plain ``python`` has no torch, so
    the command runs again with ``.venv``'s interpreter (made by ``make setup``) and its exit code
    is returned. None: this Python has what the command needs (``.venv``'s, or a conda
    environment's). No ``.venv`` yet: a message that says to set it up.
    """
    import importlib.util
    import os
    import subprocess

    from course.environment import VENV, venv_python

    if all(importlib.util.find_spec(name) for name in ("torch", "trl")):
        return None
    python = venv_python(venv or VENV)
    if os.environ.get(REEXEC_VAR) or not python.exists():
        problem = "is incomplete" if os.environ.get(REEXEC_VAR) else "is not set up yet"
        raise SystemExit(f"The course's environment ({python.parent.parent}) {problem}: run `make setup` (or "
                         "`python -m course setup --force`), then this command again.")
    print(f"(running in the course's environment: {python} -m course {' '.join(argv)})", file=sys.stderr, flush=True)
    return subprocess.call([str(python), "-m", "course", *argv], env={**os.environ, REEXEC_VAR: "1"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course", description="RLHF from scratch: the course shell")
    sub = parser.add_subparsers(dest="command", required=True)
    torch_index = argparse.ArgumentParser(add_help=False)
    torch_index.add_argument("--torch-index", default="", metavar="PIP_ARGS",
                             help='where pip finds torch, e.g. "--index-url https://download.pytorch.org/whl/cpu"')
    p = sub.add_parser("setup", parents=[torch_index], help="create or update the course's environment (.venv)")
    p.add_argument("--force", action="store_true", help="reinstall even if the environment is up to date")
    p.add_argument("--wheels", help="install from this wheelhouse folder alone, with no network")
    p.add_argument("--venv", help="the environment's folder (default: .venv in the course folder)")
    p.add_argument("--latest", action="store_true", help="ignore the lock: the newest release of everything")
    p.add_argument("--torch-spec", default="torch", help="with --latest: which torch (default: the newest)")
    p.set_defaults(func=cmd_setup)
    p = sub.add_parser("wheelhouse", help="download every locked wheel, for offline installs")
    p.add_argument("-o", "--output", default="wheelhouse", help="the folder to fill (default: wheelhouse)")
    p.add_argument("--platform", action="append", default=[],
                   help="a pip platform tag, e.g. manylinux_2_28_x86_64, macosx_11_0_arm64, win_amd64 "
                        "(repeatable; default: this machine)")
    p.set_defaults(func=cmd_wheelhouse)
    p = sub.add_parser("lab", parents=[torch_index], help="set up if needed, then open JupyterLab at lesson 00")
    p.add_argument("--ip", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, help="port (default: the first free one from 8888)")
    p.add_argument("--no-browser", action="store_true", help="print the address instead of opening a browser")
    p.set_defaults(func=cmd_lab)
    p = sub.add_parser("test", parents=[torch_index], help="set up if needed, then run every test offline")
    p.add_argument("paths", nargs="*", help="what to test (default: tests lessons solutions)")
    p.set_defaults(func=cmd_test)
    p = sub.add_parser("list", help="the lessons in order")
    p.add_argument("-v", "--verbose", action="store_true", help="also print each lesson's objectives")
    p.set_defaults(func=cmd_list)
    sub.add_parser("doctor", help="check this machine: versions, device, profile, offline").set_defaults(func=cmd_doctor)
    p = sub.add_parser("build", help="regenerate lessons/ from solutions/ and re-execute both")
    p.add_argument("lessons", nargs="*", help="lesson numbers or slugs (default: all)")
    p.add_argument("--check", action="store_true", help="write nothing; fail if lessons/ drifted")
    p.add_argument("--no-execute", action="store_true", help="regenerate sources without running them")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("run", help="run one stage of the pipeline headless (builds missing earlier stages)")
    p.add_argument("stage", help="tokenizer, base, sft, sft_lora, reward, ppo, dpo, grpo or arena")
    p.add_argument("--profile", help="cpu or gpu (default: $RLHF_PROFILE or automatic)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a size, e.g. --set ppo.steps=40 (repeatable)")
    p.add_argument("--model", metavar="PATH_OR_ID",
                   help="start SFT (and every later stage) from this causal LM instead of the base GPT: a folder "
                        "saved with save_pretrained, or a hub id with RLHF_ALLOW_HUB=1 (default: $RLHF_MODEL)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("dry-run", help="every stage at a profile's shapes for a handful of steps, on any machine")
    p.add_argument("--profile", default="gpu", help="the profile whose shapes to run (default: gpu)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="change a shape too, e.g. --set gpt.n_layer=12 (repeatable)")
    p.add_argument("--artifacts", metavar="FOLDER",
                   help="an empty folder to keep the tiny artifacts in (default: a temporary one, removed)")
    p.add_argument("--model", metavar="PATH_OR_ID",
                   help="start SFT from this causal LM, as `run --model` does: a folder, or a hub id with "
                        "RLHF_ALLOW_HUB=1 (default: the course's base GPT)")
    p.set_defaults(func=cmd_dry_run)
    p = sub.add_parser("pack", help="write every trained stage into one archive, for other machines")
    p.add_argument("-o", "--output", default=".", help="the archive, or a folder for it (default: here)")
    p.add_argument("--profile", help="cpu or gpu (default: $RLHF_PROFILE or automatic)")
    p.set_defaults(func=cmd_pack)
    p = sub.add_parser("unpack", help="check an archive from `pack` and install its stages")
    p.add_argument("archive")
    p.add_argument("--profile", help="cpu or gpu (default: $RLHF_PROFILE or automatic)")
    p.add_argument("--force", action="store_true", help="accept another profile or other library versions")
    p.set_defaults(func=cmd_unpack)
    p = sub.add_parser("site", help="the lessons as a static website, readable offline")
    p.add_argument("-o", "--output", default="site", help="the folder to write (default: site)")
    p.set_defaults(func=cmd_site)
    for kind, what in (("labels", "lesson 05's labels"), ("votes", "lesson 07's arena votes")):
        p = sub.add_parser(kind, help=f"a workshop's {what}: export yours, merge the room's, report")
        p.add_argument("action", choices=["export", "merge", "report"])
        p.add_argument("files", nargs="*", help="merge: the exported files; report: the merged file")
        p.add_argument("-o", "--output", help="export: the file to write; merge: the merged file (required)")
        p.add_argument("--id", help="export: your annotator id (default: a random anonymous one)")
        if kind == "labels":
            p.add_argument("--tau", type=float, default=0.5, help="report: the simulated labeler's noise scale")
        p.set_defaults(func=cmd_labels)
    p = sub.add_parser("memory", help="the GPU memory each stage needs, computed from parameter counts")
    p.add_argument("--readme", action="store_true", help="write the table into README.md instead of printing it")
    p.set_defaults(func=cmd_memory)
    p = sub.add_parser("bench", help="time each lesson and record its key figures")
    p.add_argument("lessons", nargs="*", help="lesson numbers or slugs (default: all)")
    p.add_argument("--profile", help="cpu or gpu (default: $RLHF_PROFILE or automatic)")
    p.set_defaults(func=cmd_bench)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.command in BEFORE_INSTALL:  # before anything is installed: standard library only
        return args.func(args)
    code = in_course_environment(argv)
    if code is not None:
        return code
    from rlhf_helpers.env import CourseConfigError

    try:
        return args.func(args)
    except CourseConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
