"""Writing through a temporary name: what the user's machine refuses is said as their problem, with the file."""

from __future__ import annotations

import errno

import pytest

from MRSynthesisLib.atomic import check_distinct_outputs, check_writable, is_temporary, replacing, write_json
from MRSynthesisLib.errors import InputError


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS])
def test_a_machine_refusal_is_an_input_error_naming_the_file(tmp_path, code):
    path = tmp_path / "metrics.json"
    with pytest.raises(InputError) as error:
        with replacing(path) as temporary:
            temporary.write_text("half")
            raise OSError(code, "what the system says")
    assert str(error.value) == f"{path}: could not be written (what the system says); nothing was left under that name"
    assert list(tmp_path.iterdir()) == []


def test_other_errors_stay_as_they_are(tmp_path):
    with pytest.raises(FileNotFoundError):
        with replacing(tmp_path / "a.json"):
            raise FileNotFoundError(errno.ENOENT, "a bug of ours")
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_a_folder_must_be_is_named(tmp_path):
    (tmp_path / "results").write_text("a file")
    for path in (tmp_path / "results" / "a.json", tmp_path / "results" / "sub" / "a.json"):  # EEXIST, ENOTDIR
        with pytest.raises(InputError) as error:
            write_json(path, {})
        assert str(error.value) == (f"{path}: could not be written (a file stands where its folder must be); "
                                    "nothing was left under that name")
    assert (tmp_path / "results").read_text() == "a file"


def test_check_writable_finds_a_file_in_the_way_before_any_work(tmp_path):
    (tmp_path / "results").write_text("a file")
    path = tmp_path / "results" / "sub" / "flair.nii.gz"
    with pytest.raises(InputError) as error:
        check_writable([path], [], overwrite=False)
    assert str(error.value) == f"{path}: {tmp_path / 'results'} is a file, not a folder to write into"
    check_writable([tmp_path / "new" / "flair.nii.gz"], [], overwrite=False)  # a folder yet to be made is fine


def test_the_temporary_files_of_replacing_are_told_from_the_users(tmp_path):
    """Slicer's save hook (MRSynthesisModuleLib.saved_files) leaves batch mode's temporary files to batch mode."""
    for name, suffix in (("FLAIR.nii.gz", ".nii.gz"), ("a.partial.nrrd", ".nrrd"), ("x", "")):
        with replacing(tmp_path / name, suffix=suffix) as temporary:
            assert is_temporary(temporary)
            temporary.write_text("")
    for name in ("FLAIR.nii.gz", "a.partial.nrrd", ".hidden.nii.gz", "flair.partial", "x", ".x.partially.nii"):
        assert not is_temporary(tmp_path / name), name


def test_a_folder_that_cannot_be_written_into_is_refused_before_any_work(read_only):
    """A read-only output folder was found only when the first output was written, after the whole inference."""
    with pytest.raises(InputError, match=rf"^{read_only}: cannot be written into \(.+\); choose another output folder"):
        check_writable([read_only / "FLAIR_synthetic.nii.gz"], [], overwrite=False)
    with pytest.raises(InputError, match=rf"^{read_only / 'new'}: cannot be written into"):  # a folder to be made there
        check_writable([read_only / "new" / "FLAIR_synthetic.nii.gz"], [], overwrite=False)
    assert list(read_only.iterdir()) == []


def test_a_writable_folder_is_left_as_it_was(tmp_path):
    check_writable([tmp_path / "out" / "FLAIR_synthetic.nii.gz"], [], overwrite=False)
    assert list(tmp_path.iterdir()) == []  # the probe is gone, and no folder was made


def test_two_outputs_under_one_name_are_refused(tmp_path):
    check_distinct_outputs([("output FLAIR", tmp_path / "a.nii.gz"), ("its sidecar", tmp_path / "a.json")])
    with pytest.raises(InputError, match=r"contributions.json: would be written twice, as the sidecar of output FLAIR "
                                         r"and as the saliency summary; choose other names"):
        check_distinct_outputs([("the sidecar of output FLAIR", tmp_path / "contributions.json"),
                                ("the saliency summary", tmp_path / "x" / ".." / "contributions.json")])
