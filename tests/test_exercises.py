import pytest
import torch

from rlhf_helpers.checks.l00_start_here import check_softmax, reference_softmax, softmax_cases
from rlhf_helpers.exercises import Case, ExerciseError, check, compare


def learner_softmax(logits, dim=-1):
    return torch.softmax(logits, dim=dim)


def unattempted(logits, dim=-1):
    raise NotImplementedError("Your turn")


def naive_softmax(logits, dim=-1):
    exps = logits.exp()
    return exps / exps.sum(dim=dim, keepdim=True)


def test_correct_answer_is_returned_with_a_tick(capsys):
    assert check_softmax(learner_softmax) is learner_softmax
    assert capsys.readouterr().out.startswith("✓ Exercise 00.1")


def test_not_attempted_falls_back_to_reference(capsys):
    assert check_softmax(unattempted) is reference_softmax
    out = capsys.readouterr().out
    assert "not attempted" in out and "reference" in out


def test_wrong_answer_names_exercise_input_expected_got_and_hint():
    with pytest.raises(ExerciseError) as err:
        check_softmax(naive_softmax)
    message = str(err.value)
    assert "Exercise 00.1" in message
    assert "[1000.0, 1001.0, 1002.0]" in message  # the input that broke it
    assert "expected:" in message and "got:" in message and "nan" in message
    assert "hint:" in message


def test_wrong_dimension_is_caught():
    with pytest.raises(ExerciseError, match="along dim 0"):
        check_softmax(lambda logits, dim=-1: torch.softmax(logits, dim=-1))


def test_crash_inside_learner_code_is_reported_as_the_exercise():
    def crashes(logits, dim=-1):
        return logits.softmax()  # TypeError: missing dim

    with pytest.raises(ExerciseError, match=r"raised TypeError") as err:
        check_softmax(crashes)
    assert "input tried" in str(err.value)


def test_learner_cannot_corrupt_the_reference_inputs():
    def mutates(logits, dim=-1):
        logits.zero_()  # in place: would change the input the reference sees
        return torch.softmax(logits, dim=dim)

    with pytest.raises(ExerciseError):
        check_softmax(mutates)


def test_reference_agrees_with_torch_on_every_case():
    for case in softmax_cases():
        expected = torch.softmax(*case.args, dim=case.kwargs.get("dim", -1))
        assert compare(reference_softmax(*case.args, **case.kwargs), expected) is None


@pytest.mark.parametrize(
    "got, expected, fragment",
    [
        ([1, 2], torch.tensor([1, 2]), "torch.Tensor"),
        (torch.zeros(2, 3), torch.zeros(3, 2), "shape"),
        (torch.zeros(2, dtype=torch.float64), torch.zeros(2), "dtype"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.1]), "differ"),
        (1.0, 2.0, "differ"),
        ("a", "b", "differ"),
        ([1, 2], [1, 3], "output[1]"),
        ([[0, 1], [2, torch.zeros(3)]], [[0, 1], [2, torch.tensor([0.0, 5.0, 0.0])]], "output[1][1]: values differ, first at index (1,): expected 5, got 0"),
        ({"a": 1}, {"a": 1, "b": 2}, "key 'b' is missing"),
    ],
)
def test_compare_explains_differences(got, expected, fragment):
    assert fragment in compare(got, expected)


def test_compare_accepts_equal_values():
    assert compare(torch.tensor([1.0, float("-inf")]), torch.tensor([1.0, float("-inf")])) is None
    assert compare(0.1 + 0.2, 0.3) is None
    assert compare((1, "a"), (1, "a")) is None


def test_generic_check_with_custom_cases(capsys):
    cases = [Case((2, 3), about="small"), Case((10, -4))]
    assert check("Exercise X", lambda a, b: a + b, lambda a, b: a + b, cases, hint="add") is not None
    with pytest.raises(ExerciseError, match=r"\(10, -4\)"):
        check("Exercise X", lambda a, b: abs(a) + abs(b), lambda a, b: a + b, cases, hint="add")
