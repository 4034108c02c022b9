
import pytest

from asd.data import FileNameError, list_clips, parse_attribute_string, parse_clip_name, read_attributes_csv

from .conftest import SUBSET


def test_parses_2021_plus_names_with_attributes():
    info = parse_clip_name("dev/ToyCar/test/section_00_target_test_anomaly_0001_car_A1_spd_28V_mic_2.wav")
    assert (info.machine_type, info.section, info.domain, info.split, info.label, info.index) == (
        "ToyCar", 0, "target", "test", "anomaly", 1)
    assert info.attributes == {"car": "A1", "spd": "28V", "mic": "2"}
    assert info.is_anomaly and info.scheme == "dcase2021+"
    assert info.attribute_string == "car_A1_spd_28V_mic_2"


def test_parses_2021_names_without_attributes_and_2024_no_attributes():
    assert parse_clip_name("fan/train/section_02_source_train_normal_0123.wav").attributes == {}
    info = parse_clip_name("x/train/section_01_target_train_normal_0004_noAttributes.wav")
    assert (info.section, info.domain, info.attributes) == (1, "target", {})


def test_parses_2020_names_with_split_from_folder():
    info = parse_clip_name("dev_data/fan/test/anomaly_id_04_00000012.wav")
    assert (info.machine_type, info.section, info.domain, info.split, info.label, info.index, info.scheme) == (
        "fan", 4, "source", "test", "anomaly", 12, "dcase2020")
    assert parse_clip_name("normal_id_00_00000000.wav").label == "normal"


def test_unlabelled_eval_names_have_no_label():
    info = parse_clip_name("eval/ToyCar/test/section_03_0042.wav")
    assert info.label is None and info.section == 3
    with pytest.raises(ValueError, match="no normal/anomaly label"):
        info.is_anomaly


@pytest.mark.parametrize("name", ["recording.wav", "section_00_side_test_normal_0001.wav", "normal_00_0001.wav"])
def test_rejects_other_names(name):
    with pytest.raises(FileNameError, match="not a DCASE clip name"):
        parse_clip_name(name)


def test_odd_attribute_tokens_kept_whole():
    assert parse_attribute_string("loud_noise_x") == {"attributes": "loud_noise_x"}


def test_attribute_table_and_listing_on_real_subset():
    table = read_attributes_csv(SUBSET / "attributes_00.csv")
    assert table["section_00_target_train_normal_0002_car_A1_spd_28V_mic_2.flac"] == {"car": "A1", "spd": "28V", "mic": "2"}
    train = list_clips(SUBSET, split="train")
    test = list_clips(SUBSET, split="test")
    assert len(train) == 10 and {c.domain for c in train} == {"source", "target"}
    assert all(c.label == "normal" and c.machine_type == "ToyCar" for c in train)
    assert sorted((c.domain, c.label) for c in test) == sorted(
        [(d, l) for d in ("source", "target") for l in ("normal", "anomaly")] * 2)
    assert len(list_clips(SUBSET)) == 18
    assert len(list_clips(SUBSET / "test")) == 8


def test_listing_a_folder_without_clips_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train"):
        list_clips(tmp_path, split="train")
    (tmp_path / "test").mkdir()
    with pytest.raises(FileNotFoundError, match="no .wav or .flac"):
        list_clips(tmp_path, split="test")


def _touch(root, *paths):
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"")


def test_any_names_train_from_the_folder_or_its_train_folder(tmp_path):
    """Any names, found recursively (hidden files and test/ left out); domains from
    source/ and target/ folders, else source; a train/ folder wins when there is one."""
    from asd.data import training_clips

    _touch(tmp_path / "press-07", "2026-11-03/a.wav", "target/day2/b.FLAC", "c.flac", ".d.wav", "notes.txt",
           "test/normal/x.wav", "._e.wav")
    clips = training_clips(tmp_path / "press-07")
    assert [c.path.name for c in clips] == ["a.wav", "c.flac", "b.FLAC"]
    assert [c.domain for c in clips] == ["source", "source", "target"]
    assert {(c.label, c.split, c.machine_type, c.scheme, c.section) for c in clips} == {
        ("normal", "train", "press-07", "folders", 0)}
    _touch(tmp_path / "press-07", "train/only.wav")
    assert [c.path.name for c in training_clips(tmp_path / "press-07")] == ["only.wav"]
    with pytest.raises(FileNotFoundError, match="no .wav or .flac clips"):
        training_clips(_empty(tmp_path))


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_labelled_test_folders_in_mimii_layout(tmp_path):
    """normal/ and abnormal/ (or anomaly/) folders label test clips, a test/ folder's or the
    folder's own; id_XX/ names the section; a clip no folder labels is refused."""
    _touch(tmp_path / "fan", "id_02/normal/00000000.wav", "id_02/abnormal/00000000.wav", "id_04/anomaly/1.wav")
    clips = list_clips(tmp_path / "fan", split="test")
    assert [(c.section, c.label, c.domain) for c in clips] == [(2, "anomaly", "source"), (2, "normal", "source"),
                                                               (4, "anomaly", "source")]
    _touch(tmp_path / "press", "test/target/normal/a.wav", "test/source/anomaly/b.wav", "train/c.wav")
    assert [(c.domain, c.label, c.split) for c in list_clips(tmp_path / "press", split="test")] == [
        ("source", "anomaly", "test"), ("target", "normal", "test")]
    _touch(tmp_path / "press", "test/unlabelled.wav")
    with pytest.raises(FileNameError, match="not a DCASE clip name.*normal/ or anomaly/"):
        list_clips(tmp_path / "press", split="test")


def test_dcase_names_keep_their_labels_and_attributes():
    """The subset's DCASE folder lists as it always did."""
    clips = list_clips(SUBSET, split="test")
    assert {c.scheme for c in clips} == {"dcase2021+"} and len(clips) == 8
    assert all(c.attributes and c.machine_type == "ToyCar" for c in clips)
