"""Dataset layouts, lazy decoding, batching and ``avbert-prepare``, on small trees built in ``tmp_path`` (offline)."""

import csv
import io
import json
import logging
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from urllib.error import URLError

import av
import numpy as np
import pytest
import torch

from avbert import AVBertFeatureExtractor, AVBertProcessor, AVBertVideoProcessor
from avbert.data import prepare
from avbert.data.folders import load_media_dataset
from avbert.data.transform import AVBertDataCollator, MediaTransform

DATA = Path(os.environ.get("AVBERT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")) / "data"
ESC50_AUDIO = DATA / "esc50" / "audio"
VIDEOS = DATA / "videos"
# Real fold-4 ESC-50 files, with their targets and categories.
ESC50_FILES = {"4-102844-A-49.flac": "hand_saw", "4-102871-A-42.flac": "siren"}
UCF101_VIDEOS = ["v_ApplyEyeMakeup_g01_c01.avi", "v_SoccerJuggling_g23_c01.avi", "v_SoccerJuggling_g24_c01.avi"]

needs_esc50 = pytest.mark.skipif(
    not all((ESC50_AUDIO / name).is_file() for name in ESC50_FILES), reason="shared ESC-50 files absent"
)
needs_ucf101 = pytest.mark.skipif(
    not all((VIDEOS / "ucf101" / name).is_file() for name in UCF101_VIDEOS), reason="shared UCF101 videos absent"
)


def write_mp4(path: Path, seconds: float = 1.0, fps: int = 30, size: int = 32, audio: bool = True) -> Path:
    """A tiny MPEG-4 video (and AAC mono tone) written with PyAV."""
    rate = 16000
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=rate) if audio else None
        if sound is not None:
            sound.layout = "mono"
        for i in range(int(seconds * fps)):
            image = np.full((size, size, 3), (i * 8) % 256, np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode())
        if sound is not None:
            samples = (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
            for start in range(0, len(samples), 1024):
                frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="fltp", layout="mono")
                frame.sample_rate = rate
                out.mux(sound.encode(frame))
            out.mux(sound.encode())
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a media file" * 50)
    return path


def make_esc50(root: Path, meta: bool = True) -> Path:
    """Two real fold-4 files plus copies of them renamed into fold 1 (the shared data only has fold 4)."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    for name in ESC50_FILES:
        (audio / name).symlink_to(ESC50_AUDIO / name)
        shutil.copy(ESC50_AUDIO / name, audio / ("1-9" + name[2:]))
    if meta:
        (root / "meta").mkdir()
        with (root / "meta" / "esc50.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "fold", "target", "category"])
            for name, category in ESC50_FILES.items():
                writer.writerow([name, 4, name.split("-")[-1].split(".")[0], category])
    return root


def make_tiny_processor() -> AVBertProcessor:
    """Two clips of 4 frames at 32 px and half a second of sound each: fast to decode in tests."""
    video = AVBertVideoProcessor(
        num_clips=2,
        num_frames=4,
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        train_jitter_scales=(32, 40),
        train_crop_size=28,
    )
    return AVBertProcessor(
        feature_extractor=AVBertFeatureExtractor(num_clips=2, clip_samples=8000), video_processor=video
    )


@pytest.fixture
def tiny_processor() -> AVBertProcessor:
    return make_tiny_processor()


# ---------------------------------------------------------------------------------------------------------------------
# Layouts


@needs_esc50
def test_esc50_layout_splits_by_fold_and_names_from_meta(tmp_path):
    root = make_esc50(tmp_path / "esc50")
    train = load_media_dataset("esc50", root, "train", split_id=1)
    test = load_media_dataset("esc50", root, "test", split_id=1)
    assert [Path(p).name for p in train["path"]] == sorted(ESC50_FILES)
    assert all(Path(p).name.startswith("1-") for p in test["path"]) and len(test) == 2
    names = train.features["label"].names
    assert names == test.features["label"].names and len(names) == 50
    assert [names[label] for label in train["label"]] == ["hand_saw", "siren"]
    assert all(Path(p).is_absolute() for p in train["path"])
    # fold 4 as the test fold
    assert len(load_media_dataset("esc50", root, "test", split_id=4)) == 2


@needs_esc50
def test_esc50_without_meta_names_are_target_numbers(tmp_path):
    root = make_esc50(tmp_path / "esc50", meta=False)
    ds = load_media_dataset("esc50", root, "train", split_id=1)
    assert ds.features["label"].names == [str(i) for i in range(50)]
    assert ds["label"] == [49, 42]


@needs_esc50
def test_esc50_bad_file_name_is_named(tmp_path):
    root = make_esc50(tmp_path / "esc50")
    shutil.copy(ESC50_AUDIO / "4-102844-A-49.flac", root / "audio" / "dog.flac")
    with pytest.raises(ValueError, match=r"dog.flac: not an ESC-50 file name"):
        load_media_dataset("esc50", root, "train")


def make_ucf101(root: Path) -> Path:
    for name in UCF101_VIDEOS:
        class_name = name.split("_")[1]
        (root / class_name).mkdir(parents=True, exist_ok=True)
        (root / class_name / name).symlink_to(VIDEOS / "ucf101" / name)
    splits = root / "splits"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 BabyCrawling\n3 SoccerJuggling\n")
    (splits / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\nSoccerJuggling/v_SoccerJuggling_g23_c01.avi 3\n"
    )
    (splits / "testlist01.txt").write_text("SoccerJuggling/v_SoccerJuggling_g24_c01.avi\n")
    return root


@needs_ucf101
def test_ucf101_layout_uses_split_lists_and_class_index(tmp_path):
    root = make_ucf101(tmp_path / "ucf101")
    train = load_media_dataset("ucf101", root, "train")
    test = load_media_dataset("ucf101", root, "test")
    assert train.features["label"].names == ["ApplyEyeMakeup", "BabyCrawling", "SoccerJuggling"]
    assert train["label"] == [0, 2] and test["label"] == [2]
    assert Path(test["path"][0]) == root / "SoccerJuggling" / "v_SoccerJuggling_g24_c01.avi"
    with pytest.raises(ValueError, match=r"trainlist02.txt"):
        load_media_dataset("ucf101", root, "train", split_id=2)
    (root / "splits" / "testlist02.txt").write_text("SoccerJuggling/v_SoccerJuggling_g99_c01.avi\n")
    with pytest.raises(ValueError, match=r"1 of 1 files listed in .*testlist02.txt do not exist"):
        load_media_dataset("ucf101", root, "test", split_id=2)
    with pytest.raises(ValueError, match="splits"):
        load_media_dataset("ucf101", root, "validation")


def test_kinetics_sounds_layout_and_class_mismatch(tmp_path):
    root = tmp_path / "ks"
    for split in ("train", "test"):
        for name in ("playing drums", "dog barking"):
            write_mp4(root / split / name / f"{split}_0.mp4", seconds=0.2)
    write_mp4(root / "train" / "dog barking" / "train_1.mp4", seconds=0.2)
    train = load_media_dataset("kinetics-sounds", root, "train")
    assert train.features["label"].names == ["dog barking", "playing drums"]
    assert train["label"] == [0, 0, 1]
    assert load_media_dataset("kinetics-sounds", root, "test")["label"] == [0, 1]
    (root / "test" / "singing").mkdir()
    with pytest.raises(ValueError, match="only in test: \\['singing'\\]"):
        load_media_dataset("kinetics-sounds", root, "test")


def test_folder_layout_with_and_without_split_folder(tmp_path):
    flat = tmp_path / "flat"
    write_mp4(flat / "b_class" / "x.mp4", seconds=0.2)
    write_mp4(flat / "a_class" / "nested" / "y.mp4", seconds=0.2)
    (flat / "a_class" / ".hidden").write_text("ignored")
    ds = load_media_dataset("folder", flat, "train")
    assert ds.features["label"].names == ["a_class", "b_class"]
    assert [Path(p).name for p in ds["path"]] == ["y.mp4", "x.mp4"] and ds["label"] == [0, 1]
    split = tmp_path / "split"
    write_mp4(split / "test" / "c" / "z.mp4", seconds=0.2)
    assert load_media_dataset("folder", split, "test")["path"] == [str(split / "test" / "c" / "z.mp4")]


def test_csv_and_json_tables(tmp_path):
    media = write_mp4(tmp_path / "clips" / "a.mp4", seconds=0.2)
    (tmp_path / "train.csv").write_text("path,label\nclips/a.mp4,dog\nclips/a.mp4,cat\n")
    (tmp_path / "test.csv").write_text(f"path,label\n{media},bird\n")
    train = load_media_dataset("csv", tmp_path, "train")
    assert train.features["label"].names == ["bird", "cat", "dog"]  # the sibling split's classes included
    assert train["label"] == [2, 1] and train["path"][0] == str(media)
    assert load_media_dataset("csv", tmp_path / "test.csv", "ignored")["label"] == [0]

    (tmp_path / "train.json").write_text(json.dumps([{"path": "clips/a.mp4", "label": 3}]))
    ds = load_media_dataset("json", tmp_path, "train")
    assert ds.features["label"].names == ["0", "1", "2", "3"] and ds["label"] == [3]
    (tmp_path / "lines.jsonl").write_text('{"path": "clips/a.mp4", "label": "1"}\n')
    assert load_media_dataset("json", tmp_path / "lines.jsonl", "train")["label"] == [1]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("path,label\nclips/a.mp4,3\nclips/a.mp4,dog\n", "mix class numbers and class names"),
        ("path,label\nclips/a.mp4,\n", "row 1 needs a non-empty 'path' and 'label'"),
        ("file,class\nclips/a.mp4,dog\n", "row 1 needs"),
        ("path,label\nclips/missing.mp4,dog\n", "1 of 1 files listed in .*bad.csv do not exist"),
    ],
)
def test_table_errors_name_the_file(tmp_path, content, match):
    write_mp4(tmp_path / "clips" / "a.mp4", seconds=0.2)
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(ValueError, match=match):
        load_media_dataset("csv", tmp_path / "bad.csv", "train")


def test_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset layout 'videos'"):
        load_media_dataset("videos", tmp_path, "train")
    with pytest.raises(ValueError, match=f"dataset path not found: {tmp_path / 'nope'}"):
        load_media_dataset("folder", tmp_path / "nope", "train")
    with pytest.raises(ValueError, match=f"ESC-50 audio folder not found: {tmp_path / 'audio'}"):
        load_media_dataset("esc50", tmp_path, "train")
    with pytest.raises(ValueError, match=f"Kinetics-Sounds 'train' split folder not found: {tmp_path / 'train'}"):
        load_media_dataset("kinetics-sounds", tmp_path, "train")
    with pytest.raises(ValueError, match=r"no train.csv in"):
        load_media_dataset("csv", tmp_path, "train")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="no media files for layout 'folder', split 'train'"):
        load_media_dataset("folder", tmp_path, "train")


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and batching


@needs_esc50
def test_media_transform_audio_train_and_eval(tmp_path):
    ds = load_media_dataset("esc50", make_esc50(tmp_path / "esc50"), "train", split_id=1)
    extractor = AVBertFeatureExtractor(num_clips=2, clip_samples=88200)
    torch.manual_seed(0)
    train = ds.with_transform(MediaTransform(extractor, "audio", train=True))[0]
    evaluation = ds.with_transform(MediaTransform(extractor, "audio", train=False))[0]
    assert train["input_features"].shape == evaluation["input_features"].shape == (2, 1, 80, 128)
    assert train["labels"] == evaluation["labels"] == 49 and train["error"] is None
    assert not torch.equal(train["input_features"], evaluation["input_features"])  # masking in train only
    assert "pixel_values" not in train


def test_media_transform_video_shapes_and_corrupt_file(tmp_path, tiny_processor):
    good = write_mp4(tmp_path / "train" / "a" / "good.mp4")
    write_corrupt(tmp_path / "train" / "a" / "bad.mp4")
    ds = load_media_dataset("folder", tmp_path, "train")
    rows = ds.with_transform(MediaTransform(tiny_processor, "audio-visual", train=False))[:]
    assert rows["error"][1] is None and rows["pixel_values"][1].shape == (2, 3, 4, 32, 32)
    assert rows["input_features"][1].shape == (2, 1, 80, 128)
    assert rows["error"][0].startswith(f"{tmp_path / 'train' / 'a' / 'bad.mp4'}: ") and rows["pixel_values"][0] is None
    assert rows["labels"] == [0, 0]

    train = MediaTransform(tiny_processor, "visual", train=True)({"path": [str(good)], "label": [0]})
    assert train["pixel_values"][0].shape == (2, 3, 4, 28, 28) and "input_features" not in train
    with pytest.raises(ValueError, match="modality"):
        MediaTransform(tiny_processor, "video", train=False)


def test_media_transform_reports_missing_sound_track(tmp_path, tiny_processor):
    silent = write_mp4(tmp_path / "silent.mp4", audio=False)
    out = MediaTransform(tiny_processor, "audio-visual", train=False)({"path": [str(silent)], "label": [1]})
    assert out["error"][0].startswith(str(silent)) and "audio" in out["error"][0]
    visual = MediaTransform(tiny_processor, "visual", train=False)({"path": [str(silent)], "label": [1]})
    assert visual["error"] == [None]


def test_collator_drops_bad_rows_and_raises_when_all_fail(caplog):
    good = {"pixel_values": torch.zeros(2, 3, 4, 8, 8), "input_features": torch.ones(2, 1, 80, 128), "labels": 3}
    bad = {"pixel_values": None, "input_features": None, "labels": 1, "error": "/x/bad.mp4: cannot open as media"}
    collator = AVBertDataCollator()
    with caplog.at_level(logging.WARNING):
        batch = collator([{**good, "error": None}, bad, {**good, "error": None}])
    assert batch["pixel_values"].shape == (2, 2, 3, 4, 8, 8) and batch["input_features"].shape == (2, 2, 1, 80, 128)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [3, 3]
    assert collator.skipped == ["/x/bad.mp4: cannot open as media"]
    assert "/x/bad.mp4" in caplog.text
    with pytest.raises(RuntimeError, match=r"every file of a batch of 2 failed.*/x/bad.mp4"):
        collator([bad, bad])


def test_dataloader_with_workers(tmp_path, tiny_processor):
    for i in range(3):
        write_mp4(tmp_path / "train" / ("cat" if i else "dog") / f"{i}.mp4")
    write_corrupt(tmp_path / "train" / "cat" / "zz_bad.mp4")
    ds = load_media_dataset("folder", tmp_path, "train")
    collator = AVBertDataCollator()
    transform = MediaTransform(tiny_processor, "audio-visual", train=True)
    assert pickle.loads(pickle.dumps(transform)).modality == "audio-visual"  # for spawned workers too
    loader = torch.utils.data.DataLoader(
        ds.with_transform(transform),
        batch_size=2,
        num_workers=2,
        collate_fn=collator,
    )
    batches = list(loader)
    assert [b["pixel_values"].shape[0] for b in batches] == [2, 1]  # the bad file is dropped from the 2nd batch
    assert batches[0]["pixel_values"].shape[1:] == (2, 3, 4, 28, 28)
    assert torch.cat([b["labels"] for b in batches]).tolist() == [0, 0, 1]
    # the collator ran in the workers, so the main process's copy saw nothing; the bad row is still accounted for
    assert sum(b["labels"].numel() for b in batches) == len(ds) - 1


# ---------------------------------------------------------------------------------------------------------------------
# avbert-prepare


def test_prepare_folder_links_media_and_reports_bad_files(tmp_path, capsys):
    source = tmp_path / "source"
    write_mp4(source / "walking" / "a.mp4", seconds=0.2)
    write_mp4(source / "walking" / "deep" / "b.mp4", seconds=0.2)
    write_mp4(source / "running" / "c.mp4", seconds=0.2)
    write_corrupt(source / "running" / "notes.mp4")
    write_mp4(source / "loose.mp4", seconds=0.2)
    out = tmp_path / "out"
    assert prepare.main(["folder", "--source", str(source), "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "3 files in 3 classes" in captured.out  # "deep" is the class of b.mp4 (its parent folder)
    assert f"{source / 'running' / 'notes.mp4'}: cannot open as media" in captured.err
    assert f"{source / 'loose.mp4'}: not in a class folder" in captured.err
    assert (out / "walking" / "a.mp4").is_symlink()
    ds = load_media_dataset("csv", out / "dataset.csv", "train")
    assert ds.features["label"].names == ["deep", "running", "walking"] and len(ds) == 3
    by_folder = load_media_dataset("folder", out, "train")
    assert by_folder["label"] == ds["label"] and by_folder["path"] == ds["path"]

    copied = tmp_path / "copied"
    assert prepare.main(["folder", "--source", str(source), "--output-dir", str(copied), "--copy"]) == 0
    assert not (copied / "walking" / "a.mp4").is_symlink() and (copied / "walking" / "a.mp4").is_file()


def test_prepare_download_fails_fast_without_network(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(prepare, "urlopen", no_network)
    for dataset in ("esc50", "ucf101", "kinetics-sounds"):
        assert prepare.main([dataset, "--output-dir", str(tmp_path / dataset)]) == 1
        err = capsys.readouterr().err
        assert "no network access" in err and "manually" in err and "--source PATH" in err
    assert prepare.main(["folder", "--output-dir", str(tmp_path / "f")]) == 1
    assert "needs --source" in capsys.readouterr().err


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, status: int) -> None:
        super().__init__(data)
        self.status = status
        self.headers = {"Content-Type": "application/zip"}


def test_download_resumes_with_a_range_request(tmp_path, monkeypatch):
    dest = tmp_path / "file.zip"
    dest.with_name("file.zip.part").write_bytes(b"0123")
    seen = []

    def fake_urlopen(request, timeout):
        seen.append(request.get_header("Range"))
        return _FakeResponse(b"456789", 206)

    monkeypatch.setattr(prepare, "urlopen", fake_urlopen)
    assert prepare.download("https://example.invalid/file.zip", dest, "a file") == dest
    assert seen == ["bytes=4-"] and dest.read_bytes() == b"0123456789"


@needs_esc50
def test_prepare_esc50_from_archive_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "urlopen", None)  # any download attempt would fail loudly
    archive = tmp_path / "ESC-50-master.zip"
    tree = make_esc50(tmp_path / "tree")
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(tree.rglob("*")):
            if file.is_file():
                zf.write(file, Path("ESC-50-master") / file.relative_to(tree))
    out = tmp_path / "esc50"
    assert prepare.main(["esc50", "--source", str(archive), "--output-dir", str(out)]) == 0
    assert (out / "audio").is_dir() and not (out / "audio").is_symlink() and (out / "meta" / "esc50.csv").is_file()
    test = load_media_dataset("esc50", out, "test", split_id=1)
    assert len(test) == 2 and test.features["label"].names[49] == "hand_saw"


@needs_ucf101
def test_prepare_ucf101_from_folder_and_rar_without_rarfile(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare, "urlopen", None)
    extracted = make_ucf101(tmp_path / "downloads" / "UCF-101")
    (extracted / "splits").rename(tmp_path / "downloads" / "ucfTrainTestlist")
    out = tmp_path / "ucf101"
    assert prepare.main(["ucf101", "--source", str(tmp_path / "downloads"), "--output-dir", str(out)]) == 0
    assert load_media_dataset("ucf101", out, "train")["label"] == [0, 2]
    assert (out / "SoccerJuggling").is_symlink() and (out / "splits" / "classInd.txt").is_file()

    if prepare.importlib.util.find_spec("rarfile") is None:
        rar = tmp_path / "UCF101.rar"
        rar.write_bytes(b"Rar!")
        (tmp_path / prepare.UCF101_SPLITS_ZIP).write_bytes(b"")
        assert prepare.main(["ucf101", "--source", str(rar), "--output-dir", str(tmp_path / "u2")]) == 1
        assert "'rarfile' module is not installed" in capsys.readouterr().err


def test_prepare_kinetics_sounds_from_folder(tmp_path):
    for split in ("train", "test"):
        write_mp4(tmp_path / "src" / "kinetics-sounds" / split / "dog barking" / "0.mp4", seconds=0.2)
    out = tmp_path / "ks"
    assert prepare.main(["kinetics-sounds", "--source", str(tmp_path / "src"), "--output-dir", str(out), "--copy"]) == 0
    assert not (out / "train").is_symlink()
    assert load_media_dataset("kinetics-sounds", out, "test").features["label"].names == ["dog barking"]


# ---------------------------------------------------------------------------------------------------------------------
# uint8 frames out of the workers, normalized on the model's device


@pytest.mark.parametrize(
    "jitter", [{}, {"clip_brightness_jitter": 0.3, "clip_contrast_jitter": 0.3}], ids=["", "jitter"]
)
def test_uint8_clips_normalized_later_are_the_float_path(tmp_path, tiny_processor, jitter):
    """``defer_normalization``: uint8 clips (a quarter of the bytes) and the jitter factors; ``normalize_clips`` on
    them gives exactly the float call's values (the same code, on the same device)."""
    path = write_mp4(tmp_path / "v.mp4", size=48)
    settings = {"do_train_augmentation": True, "seed": 5, **jitter}
    expected = tiny_processor(videos=str(path), **settings)
    deferred = tiny_processor(videos=str(path), defer_normalization=True, **settings)
    pixels = deferred["pixel_values"]
    assert pixels.dtype == torch.uint8 and pixels.shape == expected["pixel_values"].shape
    assert pixels.element_size() * 4 == expected["pixel_values"].element_size()
    assert deferred["input_features"].dtype == torch.float32  # the sound is not deferred
    assert ("clip_jitter" in deferred) == bool(jitter)
    if jitter:
        assert deferred["clip_jitter"].shape == (1, 2, 2) and not torch.all(deferred["clip_jitter"] == 1)
    video_processor = tiny_processor.video_processor
    normalized = video_processor.normalize_clips(pixels, deferred.get("clip_jitter"), device="cpu")
    assert normalized.dtype == torch.float32 and torch.equal(normalized, expected["pixel_values"])
    assert torch.equal(pixels, deferred["pixel_values"])  # the uint8 input is left as it was
    on_device = tiny_processor(videos=str(path), device="cpu", **settings)  # transformers' `device=`: all of it there
    assert torch.equal(on_device["pixel_values"], expected["pixel_values"])


def test_clip_jitter_is_torchvisions_brightness_and_contrast():
    """The jitter of all clips at once gives torchvision's per-clip ``adjust_brightness`` / ``adjust_contrast``
    within float32 rounding (1e-6 on pixels in [0, 1])."""
    import torchvision.transforms.v2.functional as TF

    from avbert.video_processing_avbert import _jitter_clips

    generator = torch.Generator().manual_seed(0)
    values = torch.rand(2, 3, 3, 4, 8, 8, generator=generator)  # (rows, clips, C, T, H, W)
    factors = 0.6 + 0.8 * torch.rand(2, 3, 2, generator=generator, dtype=torch.float64)
    expected = values.clone()
    for row in range(2):
        for clip in range(3):
            frames = expected[row, clip].transpose(0, 1)  # (T, C, H, W)
            frames = TF.adjust_brightness(frames, float(factors[row, clip, 0]))
            frames = TF.adjust_contrast(frames, float(factors[row, clip, 1]))
            expected[row, clip] = frames.transpose(0, 1)
    _jitter_clips(values, factors)
    torch.testing.assert_close(values, expected, atol=1e-6, rtol=0)


class _Uint8Clips(torch.utils.data.Dataset):
    """Rows as ``MediaTransform(defer_normalization=True)`` gives them, at the tiny model's clip size."""

    def __init__(self, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.rows = [
            {
                "pixel_values": torch.randint(0, 256, (3, 3, 4, 16, 16), dtype=torch.uint8, generator=generator),
                "input_features": torch.randn(3, 1, 16, 16, generator=generator),
                "clip_jitter": 0.8 + 0.4 * torch.rand(3, 2, generator=generator, dtype=torch.float64),
                "labels": index % 3,
                "error": None,
            }
            for index in range(size)
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def test_trainer_normalizes_uint8_batches_on_the_model_device(tmp_path, tiny_processor):
    """Real decoded rows: MediaTransform(defer_normalization=True) -> collator -> the trainer's input preparation
    gives the float rows' batch; the trainer trains on uint8 rows; without a video processor it says what to pass."""
    from test_training_recipes import args_for, finetune_recipe, tiny_config

    from avbert import AVBertForVideoClassification
    from avbert.training.trainers import AVBertTrainer

    paths = [str(write_mp4(tmp_path / f"{index}.mp4", size=40)) for index in range(2)]
    rows = {"path": paths, "label": [0, 1]}
    collator = AVBertDataCollator()
    batches = {}
    for defer in (False, True):
        torch.manual_seed(11)  # the training draw comes from torch's global generator, as in the workers
        transform = MediaTransform(tiny_processor, "audio-visual", train=True, defer_normalization=defer)
        decoded = transform(rows)
        batches[defer] = collator([{key: values[i] for key, values in decoded.items()} for i in range(2)])
    assert batches[True]["pixel_values"].dtype == torch.uint8

    recipe = finetune_recipe(train_batch_size=2)
    model = AVBertForVideoClassification(tiny_config())
    trainer = AVBertTrainer(
        model=model,
        args=args_for(recipe, tmp_path / "run", max_steps=2),
        recipe=recipe,
        train_dataset=_Uint8Clips(4),
        data_collator=collator,
        video_processor=tiny_processor.video_processor,
    )
    prepared = trainer._prepare_inputs(dict(batches[True]))
    assert prepared["pixel_values"].device == trainer.args.device
    assert torch.equal(prepared["pixel_values"], batches[False]["pixel_values"].to(trainer.args.device))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(np.isfinite(losses))

    trainer.video_processor = None
    with pytest.raises(ValueError, match=r"video_processor=processor\.video_processor"):
        trainer._prepare_inputs(dict(batches[True]))
