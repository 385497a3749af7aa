"""WebDataset shards: writing with a manifest, disjoint per-rank / per-worker reading, buffer shuffling, exact resume,
bad samples, and streaming from a local HTTP server (loopback only)."""

import functools
import hashlib
import http.server
import json
import math
import tarfile
import threading
from pathlib import Path

import pytest
from test_pretraining_cli import TINY  # a tiny model for the processors below (default 80 x 128 log-mels)
from test_training_data import make_tiny_processor
from torch.utils.data import DataLoader

from avbert.configuration_avbert import AVBertConfig
from avbert.data.folders import load_media_dataset
from avbert.data.shards import (
    ShardedVideoDataset,
    ShardManifest,
    deal_shards,
    load_manifests,
    write_shards,
)
from avbert.data.synthetic import make_synthetic_av_dataset
from avbert.data.transform import AVBertDataCollator, MediaTransform
from avbert.modeling_avbert import AVBertForVideoClassification
from avbert.training.train import run as train_run


def keys_of(rows: list[dict]) -> list[str]:
    return [row["key"] for row in rows]


def read_keys(dataset: ShardedVideoDataset, batches: int | None = None) -> list[list[str]]:
    """The batches (as key lists) the DataLoader yields, the first `batches` of them when given."""
    loader = DataLoader(dataset, batch_size=dataset.batch_size, num_workers=dataset.num_workers, collate_fn=keys_of)
    out = []
    for batch in loader:
        if batches is not None and len(out) == batches:
            break
        out.append(batch)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """16 one-second synthetic videos of 2 classes in 8 shards of 2."""
    root = tmp_path_factory.mktemp("corpus")
    make_synthetic_av_dataset(root / "src", num_classes=2, videos_per_class=8, duration=1.0, size=32, test_fraction=0)
    rows = load_media_dataset("folder", root, "src")  # src as a split folder: every file
    write_shards(
        [Path(p) for p in rows["path"]],
        rows["label"],
        root / "shards",
        class_names=rows.features["label"].names,
        shard_samples=2,
        root=root / "src",
    )
    return root


def test_manifest_counts_checksums_and_bytes_as_they_are(corpus: Path) -> None:
    manifest = load_manifests(str(corpus / "shards"))
    names = ["red_square_1760hz", "red_square_440hz"]
    assert (len(manifest.shards), manifest.num_samples, manifest.class_names) == (8, 16, names)
    for shard in manifest.shards:
        data = Path(shard.url).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard.sha256 and len(data) == shard.num_bytes
    with tarfile.open(manifest.shards[0].url) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("000000000.json").read())
        media = tar.extractfile("000000000.mp4").read()
    assert sorted(names) == ["000000000.json", "000000000.mp4", "000000001.json", "000000001.mp4"]
    assert media == (corpus / "src" / meta["source"]).read_bytes()  # not re-encoded
    assert meta["label_name"] == manifest.class_names[meta["label"]]


def test_shard_size_in_bytes_closes_shards(corpus: Path, tmp_path: Path) -> None:
    files = sorted((corpus / "src").rglob("*.mp4"))
    one = max(f.stat().st_size for f in files) + 2048
    manifest = write_shards(files, None, tmp_path / "out", shard_size=3 * one)
    assert all(shard.num_samples <= 3 for shard in manifest.shards) and manifest.num_samples == len(files)
    assert manifest.class_names is None
    with pytest.raises(ValueError, match="already holds shards"):
        write_shards(files, None, tmp_path / "out")


def test_deal_shards_balances_and_refuses_too_few_shards() -> None:
    assert deal_shards([5, 1, 4, 2], 2) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="3 shards cannot feed 4 readers"):
        deal_shards([1, 1, 1], 4)


@pytest.mark.parametrize("world_size, num_workers", [(1, 0), (2, 2), (4, 2)])
def test_every_sample_once_per_epoch_across_ranks_and_workers(corpus: Path, world_size: int, num_workers: int) -> None:
    manifest = load_manifests(str(corpus / "shards"))
    per_rank = []
    for rank in range(world_size):
        dataset = ShardedVideoDataset(
            manifest, batch_size=3, num_workers=num_workers, shuffle_buffer=3, rank=rank, world_size=world_size
        )
        batches = read_keys(dataset)
        assert len(batches) == dataset.batches_per_epoch and sum(map(len, batches)) == len(dataset)
        per_rank.append({key for batch in batches for key in batch})
    assert sum(map(len, per_rank)) == 16 and set().union(*per_rank) == {  # disjoint and complete
        f"shard-{i // 2:06d}.tar/{i:09d}.mp4" for i in range(16)
    }


def test_buffer_shuffle_changes_with_the_epoch_and_repeats_with_the_seed(corpus: Path) -> None:
    manifest = load_manifests(str(corpus / "shards"))
    dataset = ShardedVideoDataset(manifest, batch_size=4, shuffle_buffer=8, seed=1)
    first = read_keys(dataset)
    assert read_keys(dataset) == first
    dataset.set_epoch(1)
    second = read_keys(dataset)
    assert second != first and sorted(k for b in second for k in b) == sorted(k for b in first for k in b)


def test_uneven_readers_yield_the_same_count_and_report_the_rest(corpus: Path, caplog) -> None:
    manifest = load_manifests(str(corpus / "shards"))
    manifest.shards = manifest.shards[:3]  # 6 samples over 2 ranks: 4 + 2
    with caplog.at_level("WARNING"):
        datasets = [ShardedVideoDataset(manifest, batch_size=2, rank=r, world_size=2) for r in range(2)]
    assert "2 samples per epoch are left out" in caplog.text
    assert [len(read_keys(d)) for d in datasets] == [1, 1]


@pytest.mark.parametrize("num_workers", [0, 2, 3])
def test_resume_continues_the_interrupted_order_exactly(corpus: Path, num_workers: int) -> None:
    """Two interruptions in one epoch: the resumed streams are the uninterrupted one, batch for batch."""
    manifest = load_manifests(str(corpus / "shards"))
    kwargs = {"batch_size": 2, "num_workers": num_workers, "shuffle_buffer": 4, "seed": 3}
    dataset = ShardedVideoDataset(manifest, **kwargs)
    dataset.set_epoch(2)
    full = read_keys(dataset)
    assert len(full) == dataset.batches_per_epoch
    resumed = ShardedVideoDataset(manifest, **kwargs)
    resumed.set_epoch(2)
    resumed.resume_from(2, 1)
    part = read_keys(resumed, batches=2)  # batches 1 and 2, then interrupted again
    resumed.resume_from(2, 3)
    rest = read_keys(resumed)
    assert [full[0], *part, *rest] == full
    resumed.set_epoch(3)  # the next epoch is whole again
    assert sum(map(len, read_keys(resumed))) == len(resumed)  # 16, or 12 with 3 workers (4 left out)


def test_bad_sample_is_reported_with_its_shard_and_key(corpus: Path, tmp_path: Path) -> None:
    good = sorted((corpus / "src").rglob("*.mp4"))[:3]
    bad = tmp_path / "src" / "broken.mp4"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00" * 300)
    write_shards([*good, bad], [0, 1, 0, 1], tmp_path / "shards")
    dataset = ShardedVideoDataset(
        load_manifests(str(tmp_path / "shards")),
        MediaTransform(make_tiny_processor(), "audio-visual", train=True),
        batch_size=4,
        shuffle_buffer=0,
    )
    collator = AVBertDataCollator()
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collator)))
    assert batch["pixel_values"].shape[0] == 3 and batch["labels"].tolist() == [0, 1, 0]
    assert len(collator.skipped) == 1 and collator.skipped[0].startswith("shard-000000.tar/000000003.mp4")
    assert len(collator.skipped[0]) < 500  # names the sample, never prints its bytes


def test_manifest_errors_name_the_location(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not readable"):
        load_manifests(str(tmp_path / "missing"))
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an avbert shard manifest"):
        load_manifests(str(tmp_path))
    with pytest.raises(ValueError, match="no shard manifests match"):
        load_manifests(str(tmp_path / "nothing-*" / "manifest.json"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def http_server(corpus: Path):
    """The shard folder served on 127.0.0.1 (an ephemeral port; loopback only) for the duration of a test."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(corpus / "shards"))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


def test_shards_stream_over_http_like_local_ones(corpus: Path, http_server: str) -> None:
    local = load_manifests(str(corpus / "shards"))
    remote = load_manifests(http_server)
    assert [s.url for s in remote.shards] == [f"{http_server}/shard-{i:06d}.tar" for i in range(8)]
    kwargs = {"batch_size": 2, "num_workers": 2, "shuffle_buffer": 4, "rank": 1, "world_size": 2}
    assert read_keys(ShardedVideoDataset(remote, **kwargs)) == read_keys(ShardedVideoDataset(local, **kwargs))
    raw = next(iter(ShardedVideoDataset(remote, shuffle_buffer=0)))
    assert raw["media"] == (corpus / "src" / "red_square_1760hz" / "red_square_1760hz_000.mp4").read_bytes()


def test_avbert_train_reads_train_and_eval_shards_over_http(corpus: Path, http_server: str, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    config = AVBertConfig(**TINY, num_clips=2, num_labels=2)
    AVBertForVideoClassification(config).save_pretrained(model_dir)
    make_tiny_processor().save_pretrained(model_dir)
    out = tmp_path / "out"
    metrics = train_run(
        [
            *("--recipe", "kinetics-sounds", "--model", str(model_dir), "--output_dir", str(out)),
            *("--train_shards", http_server, "--eval_shards", f"{http_server}/manifest.json", "--max_steps", "2"),
            *("--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4"),
            *("--dataloader_num_workers", "2", "--use_cpu", "--report_to", "none", "--eval_strategy", "no"),
            *("--save_strategy", "no", "--seed", "0"),
        ]
    )
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and math.isfinite(metrics["eval_loss"])
    model = AVBertForVideoClassification.from_pretrained(out)
    assert model.config.id2label == {0: "red_square_1760hz", 1: "red_square_440hz"}


def test_manifest_round_trip() -> None:
    manifest = ShardManifest(shards=[], class_names=["a"], skipped=[{"path": "x", "reason": "y"}])
    again = ShardManifest.from_json(manifest.to_json(), "here")
    assert again == manifest and json.loads(manifest.to_json())["num_samples"] == 0


def test_prepare_shards_command_labels_sizes_and_errors(corpus: Path, tmp_path: Path, capsys) -> None:
    from avbert.data.prepare import main as prepare_main

    out = tmp_path / "labeled"
    assert prepare_main(["shards", str(corpus / "src"), str(out), "--shard-size", "64KiB"]) == 0
    manifest = load_manifests(str(out))
    assert manifest.num_samples == 16 and manifest.class_names == ["red_square_1760hz", "red_square_440hz"]
    assert all(shard.num_bytes <= 64 * 1024 for shard in manifest.shards if shard.num_samples > 1)
    assert len(manifest.shards) > 1
    assert "16 samples in" in capsys.readouterr().out
    assert prepare_main(["shards", str(corpus / "src"), str(out)]) == 1
    assert "already holds shards" in capsys.readouterr().err
    assert prepare_main(["shards", str(tmp_path / "missing"), str(tmp_path / "x")]) == 1
    with pytest.raises(SystemExit):
        prepare_main(["shards", str(corpus / "src"), str(tmp_path / "y"), "--shard-size", "lots"])


def test_unlabeled_shards_leave_out_files_pretraining_cannot_use(corpus: Path, tmp_path: Path, capsys) -> None:
    """WAV files and silent videos open fine but hold no video / no sound: they were written into pretraining shards,
    where every epoch decoded and skipped them. They are left out and listed with their reason, as `check` does."""
    import av
    import numpy as np
    from test_training_cli import make_silent_video

    from avbert.data.prepare import main as prepare_main

    source = tmp_path / "videos" / "class_a"
    source.mkdir(parents=True)
    for video in sorted((corpus / "src").rglob("*.mp4"))[:2]:
        (source / video.name).symlink_to(video)
    make_silent_video(source / "silent.mp4")
    with av.open(str(source / "sound.wav"), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())

    def shards(name: str, *flags: str) -> ShardManifest:
        assert prepare_main(["shards", str(source.parent), str(tmp_path / name), *flags]) == 0
        return load_manifests(str(tmp_path / name))

    unlabeled = shards("unlabeled", "--unlabeled")
    assert unlabeled.num_samples == 2 and unlabeled.class_names is None  # was 4: both written
    reasons = {item["path"]: item["reason"] for item in unlabeled.skipped}
    assert reasons["class_a/silent.mp4"].startswith("no audio stream")
    assert reasons["class_a/sound.wav"] == "no video stream"
    assert "silent.mp4: no audio stream" in capsys.readouterr().err
    # A labeled corpus keeps any readable media unless a recipe says which streams it reads.
    assert shards("labeled").num_samples == 4
    assert [item["path"] for item in shards("visual", "--recipe", "ucf101").skipped] == ["class_a/sound.wav"]
    audio = shards("audio", "--unlabeled", "--recipe", "esc50")
    assert [item["path"] for item in audio.skipped] == ["class_a/silent.mp4"] and audio.num_samples == 3
