"""Splits for limit-trained teachers: disjoint teacher subsets, one student fold, and the leakage check."""

import json

import pytest

from nnunet_hlfd.cli import main
from nnunet_hlfd.errors import OptionError
from nnunet_hlfd.splits import check_no_leakage, leaking_cases, limit_trained_splits

CASES = [f"case_{i:03d}" for i in range(23)]


def test_disjoint_teacher_chunks_and_a_student_fold_that_no_teacher_validates_on():
    result = limit_trained_splits(CASES, num_teachers=4, holdout=0.2, seed=1)
    folds, roles = result["folds"], result["roles"]
    assert roles["teacher_folds"] == [0, 1, 2, 3] and roles["student_fold"] == 4 and len(folds) == 5
    validation = set(folds[4]["val"])
    assert len(validation) == round(0.2 * 23) and all(set(f["val"]) == validation for f in folds)
    chunks = [set(folds[i]["train"]) for i in range(4)]
    assert sum(map(len, chunks)) == len(set().union(*chunks)) == 23 - len(validation)  # disjoint, complete
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1
    assert set(folds[4]["train"]) == set().union(*chunks) and not validation & set(folds[4]["train"])
    assert leaking_cases(folds, roles["teacher_folds"], roles["student_fold"]) == {}
    assert limit_trained_splits(CASES, num_teachers=4, holdout=0.2, seed=1) == result  # seeded
    assert limit_trained_splits(CASES, num_teachers=4, holdout=0.2, seed=2) != result


def test_one_teacher_per_site_with_every_site_in_the_validation_set():
    sites = {"BMC": CASES[:10], "HK": CASES[10:15], "UCL": CASES[15:]}
    result = limit_trained_splits(CASES, groups=sites, holdout=0.2)
    folds, roles = result["folds"], result["roles"]
    assert roles["teacher_subsets"] == ["BMC", "HK", "UCL"]
    for fold, site in zip(roles["teacher_folds"], sites):
        assert set(folds[fold]["train"]) < set(sites[site])  # a teacher sees its own site only
        assert set(folds[fold]["val"]) & set(sites[site])  # and every site is validated on
    with pytest.raises(OptionError, match="not training cases"):
        limit_trained_splits(CASES, groups={"X": ["nope"]})


def test_leakage_check_refuses_nnunets_cross_validation_as_teachers():
    """nnU-Net's 5-fold CV: fold 0's validation cases are training cases of folds 1-4."""
    folds = [{"train": [c for j, c in enumerate(CASES) if j % 5 != i], "val": CASES[i::5]} for i in range(5)]
    leaks = leaking_cases(folds, [1, 2], 0)
    assert set(leaks) == {1, 2} and leaks[1] == sorted(CASES[0::5])
    with pytest.raises(OptionError, match="leaking set-up: .* teacher fold 1 trained on 5 of them"):
        check_no_leakage(folds, [1, 2, 3, 4], 0)
    with pytest.raises(OptionError, match="not in the splits file"):
        check_no_leakage(folds, [7], 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_teachers=30), "cannot make 30 non-empty teacher subsets"),
        (dict(num_teachers=2, holdout=1.0), "holdout must be in"),
        (dict(num_teachers=0), "at least one teacher"),
        (dict(), "either a number of teachers or groups"),
    ],
)
def test_impossible_set_ups_are_refused(kwargs, message):
    with pytest.raises(OptionError, match=message):
        limit_trained_splits(CASES, **kwargs)


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """nnUNet_raw/Dataset993_Sites with 8 cases on 2 sites, and its (empty) nnUNet_preprocessed folder."""
    raw = tmp_path / "raw" / "Dataset993_Sites"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    cases = [f"{site}_Case{i:02d}" for site in ("A", "B") for i in range(4)]
    for case in cases:
        (raw / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(b"")
        (raw / "labelsTr" / f"{case}.nii.gz").write_bytes(b"")
    dataset_json = {"channel_names": {"0": "T2"}, "labels": {"background": 0, "prostate": 1}, "numTraining": 8}
    (raw / "dataset.json").write_text(json.dumps({**dataset_json, "file_ending": ".nii.gz"}))
    (raw / "sites.json").write_text(json.dumps({"A": cases[:4], "B": cases[4:]}))
    (tmp_path / "pre" / "Dataset993_Sites").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    return tmp_path / "pre" / "Dataset993_Sites"


def test_split_command_writes_nnunet_splits_and_keeps_an_existing_one(dataset, capsys):
    main(["split", "993", "--by-site", "--holdout", "0.25"])
    out = capsys.readouterr().out
    assert "fold 0: teacher on A (3 cases)" in out and "fold 2: student on all 6 teacher cases" in out
    folds = json.loads((dataset / "splits_final.json").read_text())
    roles = json.loads((dataset / "hlfd_splits.json").read_text())
    assert len(folds) == 3 and roles["student_fold"] == 2 and roles["teacher_subsets"] == ["A", "B"]
    before = (dataset / "splits_final.json").read_text()
    with pytest.raises(SystemExit) as exit_code:
        main(["split", "993", "-k", "2"])
    assert exit_code.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (dataset / "splits_final.json").read_text() == before  # untouched
    main(["split", "993", "-k", "2", "--overwrite"])
    assert (dataset / "splits_final.json.bak").read_text() == before
    main(["split", "993", "--check", "0", "1", "2"])
    assert "no leakage" in capsys.readouterr().out
    cases = sorted(c for f in folds for c in f["train"] + f["val"])
    cross_validation = [{"train": [c for c in cases if c[-1] != str(i)], "val": [c for c in cases if c[-1] == str(i)]}
                        for i in range(2)]  # fmt: skip
    (dataset / "splits_final.json").write_text(json.dumps(cross_validation))  # a hand-made, leaking split
    with pytest.raises(SystemExit):
        main(["split", "993", "--check", "1", "0"])
    assert "leaking set-up" in capsys.readouterr().err


def test_split_command_explains_what_is_missing(dataset, capsys):
    (dataset.parents[1] / "raw" / "Dataset993_Sites" / "sites.json").unlink()
    with pytest.raises(SystemExit):
        main(["split", "993", "--by-site"])
    assert "sites.json not found" in capsys.readouterr().err
    dataset.rmdir()
    with pytest.raises(SystemExit):
        main(["split", "993", "-k", "2"])
    assert "run nnUNetv2_plan_and_preprocess -d 993 first" in capsys.readouterr().err
