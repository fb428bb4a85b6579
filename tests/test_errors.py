"""instillm.errors: the shared checks."""


def test_check_min_int_wording_and_bools():
    from instillm.errors import check_min_int

    problems: list[str] = []
    for value in (1, 5):
        check_min_int(problems, "batch_size", value)
    check_min_int(problems, "max_retries", 0, minimum=0)
    assert problems == []
    for value in (0, True, 2.0, "3", None):
        check_min_int(problems, "batch_size", value)
    assert problems == [f"batch_size: must be an integer >= 1, got {v!r}" for v in (0, True, 2.0, "3", None)]
