"""The suite's markers say what they claim: every test that starts processes is marked ``slow`` (tests/conftest.py
does it at collection, from tests/process_starts.py), so that ``pytest -m "not slow"`` (README.md, section 'Tests')
leaves out every run in several processes."""

from process_starts import marked_tests, starts_processes


def test_no_selected_test_that_starts_processes_lacks_the_slow_mark(request):
    """Over the tests of this session (those ``-m "not slow"`` leaves in, when given)."""
    unmarked = [
        item.nodeid
        for item in request.session.items
        if item.get_closest_marker("slow") is None
        and starts_processes(item.module.__name__.rpartition(".")[2], item.originalname)
    ]
    assert not unmarked, "tests that start processes but are not marked slow:\n" + "\n".join(unmarked)


def test_the_process_check_sees_processes_and_marks():
    """Guards against a vacuous pass: known multi-process tests are found (a torchrun command line, subprocess, forks
    through a helper class of another module, a helper's fixture), in-process ones are not, and marks are read."""
    assert starts_processes("test_distributed", "test_two_processes_equal_one")
    assert starts_processes("test_faults", "test_sigterm_and_sigkill_leave_no_debris")
    assert starts_processes("test_publish", "test_killed_at_every_step_of_a_publish_over_two_folders")
    assert starts_processes("test_quiet_start", "test_demo_help_prints_only_the_help")
    assert not starts_processes("test_api", "test_engine_names_at_the_package_face")
    assert not starts_processes("test_clip_heads", "test_proxyclip_equals_its_authors_code")
    marks = marked_tests()
    assert marks[("test_distributed", "test_two_processes_equal_one")]  # its module's pytestmark
    assert not marks[("test_faults", "test_sigterm_and_sigkill_leave_no_debris")]  # marked by the conftest only
    assert not marks[("test_api", "test_engine_names_at_the_package_face")]
