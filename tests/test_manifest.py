from course import manifest


def test_lessons_are_numbered_in_order_with_unique_slugs():
    numbers = [l.number for l in manifest.LESSONS]
    assert numbers == list(range(len(numbers)))
    assert len({l.slug for l in manifest.LESSONS}) == len(manifest.LESSONS)
    for lesson in manifest.LESSONS:
        assert lesson.objectives and lesson.minutes_cpu > 0 and lesson.minutes_gpu > 0
        assert lesson.filename == f"{lesson.number:02d}_{lesson.slug}.ipynb"


def test_notebook_folders_hold_exactly_the_manifest_lessons():
    names = {l.filename for l in manifest.LESSONS}
    for folder in (manifest.LESSONS_DIR, manifest.SOLUTIONS_DIR):
        on_disk = {p.name for p in folder.glob("*.ipynb")}
        assert on_disk <= names, f"{folder.name}/ has notebooks the manifest does not list: {on_disk - names}"
    assert manifest.LESSONS[0].available  # lesson 00 exists


def test_find_by_number_or_slug():
    assert manifest.find("0").slug == "start_here"
    assert manifest.find("00").slug == "start_here"
    assert manifest.find("6").slug == "rlhf_with_ppo"
    assert manifest.find("tokenization").number == 1


def test_course_map_lists_every_lesson():
    table = manifest.course_map_markdown()
    for lesson in manifest.LESSONS:
        assert lesson.title in table


def test_readme_course_map_is_the_manifest():
    from course.build import readme_with_current_map

    readme = (manifest.ROOT / "README.md").read_text()
    assert readme_with_current_map(readme) == readme, "run `python -m course build` to refresh README.md"
