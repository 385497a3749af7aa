"""Shards and manifests as untrusted input, made the way a reliability trial makes them: crafted manifests and tars, and
HTTP servers on 127.0.0.1 that stall. A manifest runs no command and points nowhere outside its folder, a stalled
server fails in bounded time naming the URL, bad labels and media members are reported skips, a replaced or truncated
shard stops the run with one line naming it, members are size-bounded, and the epoch logged after a resume is right."""

import gc
import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from test_pretraining_cli import TINY
from test_shards import corpus, http_server  # noqa: F401 (fixtures: 16 synthetic videos in 8 shards, served)
from test_training_data import make_tiny_processor
from torch.utils.data import DataLoader

from avbert.configuration_avbert import AVBertConfig
from avbert.data.shards import (
    ShardedVideoDataset,
    ShardReadError,
    ShardReadOptions,
    load_manifests,
)
from avbert.modeling_avbert import AVBertForVideoClassification
from avbert.training.train import main as train_main
from avbert.training.train import run as train_run

FAST = ShardReadOptions(timeout=1.0, retries=0)
VIDEO = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200  # stands for media: these tests read raw samples, not decode


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_manifest(folder: Path, shards: dict[str, int], class_names: Sequence[str] | None = ("a", "b")) -> Path:
    """manifest.json for the shard files in ``folder`` (name -> sample count), with their true sizes and SHA-256."""
    entries = []
    for name, count in shards.items():
        data = (folder / name).read_bytes()
        entries.append(
            {"url": name, "num_samples": count, "num_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    names = list(class_names) if class_names is not None else None
    manifest = {"format": "avbert-webdataset-1", "shards": entries, "class_names": names, "skipped": []}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"


def label(value) -> bytes:
    return json.dumps({"label": value}).encode()


def read_rows(location: str, options: ShardReadOptions = FAST, num_workers: int = 0) -> list[dict]:
    dataset = ShardedVideoDataset(load_manifests(location, options), shuffle_buffer=0, options=options)
    rows = iter(DataLoader(dataset, batch_size=None, num_workers=num_workers))
    try:
        return list(rows)
    except ShardReadError as error:
        message = str(error)
    # The workers shut down here, in this thread: the worker error's traceback is a reference cycle holding the
    # DataLoader iterator, whose shutdown (joining the workers) would otherwise run whenever the garbage collector
    # does, possibly in a later test's server thread, stalling that server.
    rows = None
    gc.collect()
    raise ShardReadError(message)


# ---------------------------------------------------------------------------------------------------------------------
# 1. A manifest is data


@pytest.mark.parametrize(
    "entry",
    [
        "pipe:touch {marker}; cat {folder}/shard-000000.tar",
        "file:{folder}/shard-000000.tar",
        "http://127.0.0.1:9/shard-000000.tar",
        "{folder}/shard-000000.tar",  # absolute
        "../outside/shard-000000.tar",
        "sub/../../outside/shard-000000.tar",
    ],
)
def test_manifest_entries_run_nothing_and_stay_inside_the_folder(tmp_path: Path, entry: str) -> None:
    folder, marker = tmp_path / "corpus", tmp_path / "MARKER"
    folder.mkdir()
    write_tar(folder / "shard-000000.tar", [("000.mp4", VIDEO), ("000.json", label(0))])
    manifest = write_manifest(folder, {"shard-000000.tar": 1})
    data = json.loads(manifest.read_text())
    data["shards"][0]["url"] = entry.format(marker=marker, folder=folder)
    manifest.write_text(json.dumps(data))
    with pytest.raises(ShardReadError, match=r"manifest.json: shard entry .* refused") as error:
        read_rows(str(folder))
    assert data["shards"][0]["url"] in str(error.value)
    assert not marker.exists()


def test_a_fetched_manifest_runs_no_command(corpus: Path, http_server: str, tmp_path: Path) -> None:  # noqa: F811
    """The trial's case: a `pipe:` entry in a manifest served over HTTP. The served folder's manifest is swapped for
    the length of the test (the corpus fixture is shared)."""
    manifest = corpus / "shards" / "manifest.json"
    original = manifest.read_text()
    marker = tmp_path / "MARKER"
    data = json.loads(original)
    data["shards"][3]["url"] = f"pipe:touch {marker}; cat {corpus}/shards/shard-000003.tar"
    try:
        manifest.write_text(json.dumps(data))
        with pytest.raises(ShardReadError, match=f"{http_server}/manifest.json: shard entry 'pipe:touch"):
            load_manifests(http_server, FAST)
    finally:
        manifest.write_text(original)
    assert not marker.exists()


def test_pipe_commands_come_from_the_command_line(tmp_path: Path) -> None:
    """An object-store CLI still reads shards: the user's own `pipe:` location, with {} for each file name."""
    write_tar(tmp_path / "shard 0.tar", [("000.mp4", VIDEO), ("000.json", label(1))])
    write_manifest(tmp_path, {"shard 0.tar": 1})
    rows = read_rows(f"pipe:cat {tmp_path}/{{}}")
    assert [(row["key"], row["media"], row["label"]) for row in rows] == [("shard 0.tar/000.mp4", VIDEO, 1)]
    with pytest.raises(ValueError, match=r"needs \{\} where"):
        load_manifests(f"pipe:cat {tmp_path}/manifest.json")


# ---------------------------------------------------------------------------------------------------------------------
# 3. Stalled and unreachable servers


class StallingServer:
    """An HTTP server on 127.0.0.1 that serves ``files`` but stalls on ``stall``: ``"silent"`` accepts and never
    answers, ``"headers"`` sends the headers and the first ``sent`` bytes of the body, then nothing; ``"busy"``
    answers its first request for it with 503. It holds the stalled connections until the test ends, then closes
    them (bounded: every wait has a timeout)."""

    def __init__(self, files: dict[str, bytes], stall: str, mode: str, sent: int = 2048) -> None:
        self.files, self.stall, self.mode, self.sent = files, stall, mode, sent
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(5)
            request = connection.recv(65536).decode(errors="replace")
            path = request.split(" ")[1].lstrip("/") if request.count(" ") >= 2 else ""
            self.requests.append(path)
            data = self.files.get(path)
            if path == self.stall and self.mode == "silent":
                self.stop.wait(30)
                return
            if path == self.stall and self.mode == "busy" and self.requests.count(path) == 1:
                connection.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                return
            if data is None:
                connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            if path == self.stall and self.mode == "headers":
                connection.sendall(head + data[: self.sent])
                self.stop.wait(30)
                return
            connection.sendall(head + data)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()


@pytest.fixture
def stalling_server(tmp_path: Path) -> Iterator:
    """A factory of `StallingServer`s over a 2-shard corpus (3 samples each); all closed after the test."""
    for index in range(2):
        members = [
            (f"{index}{i}.{ext}", VIDEO if ext == "mp4" else label(1)) for i in range(3) for ext in ("mp4", "json")
        ]
        write_tar(tmp_path / f"shard-{index:06d}.tar", members)
    write_manifest(tmp_path, {"shard-000000.tar": 3, "shard-000001.tar": 3})
    files = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    servers = []

    def start(stall: str, mode: str) -> StallingServer:
        servers.append(StallingServer(files, stall, mode))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_server_that_never_answers_fails_in_bounded_time(stalling_server) -> None:
    server = stalling_server("manifest.json", "silent")
    started = time.monotonic()
    with pytest.raises(ValueError, match=rf"{server.url}/manifest.json: no answer within 1 s \(2 attempts"):
        load_manifests(server.url, ShardReadOptions(timeout=1.0, retries=1))
    assert time.monotonic() - started < 10 and server.requests == ["manifest.json", "manifest.json"]  # one retry


@pytest.mark.parametrize("mode", ["silent", "headers"])
def test_a_stalled_shard_stops_the_run_naming_the_url(stalling_server, mode: str) -> None:
    """The trial's `kill -STOP` of the shard server, before and after the headers, read by a DataLoader worker: the
    error reaches the main process as one line naming the shard, within a few timeouts."""
    server = stalling_server("shard-000001.tar", mode)
    started = time.monotonic()
    with pytest.raises(ShardReadError) as error:
        read_rows(server.url, num_workers=1)
    assert time.monotonic() - started < 15
    message = str(error.value)
    assert message.startswith(f"{server.url}/shard-000001.tar: ") and "\n" not in message
    assert re.search("no answer within 1 s" if mode == "silent" else r"no data for 1 s after \d+ bytes", message)


def test_a_busy_server_is_retried(stalling_server, caplog) -> None:
    server = stalling_server("shard-000000.tar", "busy")
    with caplog.at_level("WARNING"):
        rows = read_rows(server.url, ShardReadOptions(timeout=1.0, retries=1))
    assert len(rows) == 6 and not any("error" in row for row in rows)
    assert server.requests.count("shard-000000.tar") == 2
    assert f"{server.url}/shard-000000.tar: HTTP 503 Service Unavailable; retrying (1 of 1)" in caplog.text


def test_an_unreachable_or_missing_shard_is_a_clear_stop(stalling_server, tmp_path: Path) -> None:
    server = stalling_server("none", "silent")
    del server.files["shard-000001.tar"]
    with pytest.raises(ShardReadError, match=r"/shard-000001.tar: HTTP 404 Not Found"):
        read_rows(server.url)
    port = server.listener.getsockname()[1]
    server.close()  # nothing listens on the port any more
    manifest = load_manifests(str(tmp_path))
    for shard in manifest.shards:
        shard.url = f"http://127.0.0.1:{port}/{shard.url.rsplit('/', 1)[-1]}"
    with pytest.raises(ShardReadError, match=rf"127.0.0.1:{port}/shard-00000\d.tar: .*refused"):
        list(ShardedVideoDataset(manifest, shuffle_buffer=0, options=FAST))


# ---------------------------------------------------------------------------------------------------------------------
# 4. Labels, media members, integrity


def test_bad_labels_and_members_are_reported_skips(tmp_path: Path) -> None:
    samples = {
        "00": [("00.mp4", VIDEO), ("00.json", label(1))],
        "01": [("01.mp4", VIDEO)],
        "02": [("02.mp4", VIDEO), ("02.json", label(99))],
        "03": [("03.mp4", VIDEO), ("03.json", label(-1))],
        "04": [("04.mp4", VIDEO), ("04.json", b"[1]")],
        "05": [("05.mp4", VIDEO), ("05.json", b"{not json")],
        "06": [("06.mp4", VIDEO), ("06.json", label("cat"))],
        "07": [("07.cls", b"1"), ("07.txt", b"a caption"), ("07.mp4", VIDEO), ("07.json", label(0))],
        "08": [("08.mp4", VIDEO), ("08.wav", VIDEO), ("08.json", label(0))],
        "09": [("09.txt", b"no media"), ("09.json", label(0))],
        "10": [("10.mp4", VIDEO), ("10.json", json.dumps({"label": 1, "label_name": "dog"}).encode())],
        "11": [("11.mp4", VIDEO), ("11.json", label(True))],
    }
    write_tar(tmp_path / "shard-000000.tar", [member for members in samples.values() for member in members])
    write_manifest(tmp_path, {"shard-000000.tar": len(samples)})
    rows = {row["key"].split("/")[1].split(".")[0]: row for row in read_rows(str(tmp_path))}
    assert (rows["00"]["label"], rows["07"]["label"], rows["07"]["key"]) == (1, 0, "shard-000000.tar/07.mp4")
    assert rows["07"]["media"] == VIDEO  # chosen by extension, not the first member
    errors = {key: row["error"] for key, row in rows.items() if "error" in row}
    assert errors == {
        "01": "shard-000000.tar/01.mp4: no 01.json (the sample's label)",
        "02": "shard-000000.tar/02.mp4: label 99 is not one of the manifest's 2 classes (0-1)",
        "03": "shard-000000.tar/03.mp4: label -1 is not one of the manifest's 2 classes (0-1)",
        "04": "shard-000000.tar/04.mp4: 04.json has no label (an object with a 'label' class index)",
        "05": errors["05"],
        "06": 'shard-000000.tar/06.mp4: label "cat" is not a class index',
        "08": "shard-000000.tar/08: 2 media members (08.mp4, 08.wav), one expected",
        "09": "shard-000000.tar/09: no media member",
        "10": "shard-000000.tar/10.mp4: label 1 is 'b' in the manifest but 'dog' in 10.json",
        "11": "shard-000000.tar/11.mp4: label true is not a class index",
    }
    assert errors["05"].startswith("shard-000000.tar/05.mp4: 05.json is not valid JSON (")


def test_unlabeled_shards_need_no_label(tmp_path: Path) -> None:
    write_tar(tmp_path / "shard-000000.tar", [("00.mp4", VIDEO), ("01.mp4", VIDEO), ("01.json", b"{}")])
    write_manifest(tmp_path, {"shard-000000.tar": 2}, class_names=None)
    assert [("error" in row, row.get("label")) for row in read_rows(str(tmp_path))] == [(False, 0), (False, 0)]


def test_a_replaced_shard_stops_the_run(tmp_path: Path) -> None:
    """Same sample count and size, other bytes: the streaming SHA-256 catches it when the shard is read to its end;
    a shard of another size is refused before a sample of it is read."""
    write_tar(tmp_path / "shard-000000.tar", [("00.mp4", VIDEO), ("00.json", label(0))])
    write_manifest(tmp_path, {"shard-000000.tar": 1})
    write_tar(tmp_path / "shard-000000.tar", [("00.mp4", VIDEO[:-1] + b"\x01"), ("00.json", label(0))])
    with pytest.raises(ShardReadError, match=r"shard-000000.tar: SHA-256 [0-9a-f]{64} is not the manifest's"):
        read_rows(str(tmp_path))
    write_tar(tmp_path / "shard-000000.tar", [("00.mp4", VIDEO * 60), ("00.json", label(0))])
    dataset = ShardedVideoDataset(load_manifests(str(tmp_path)), shuffle_buffer=0)
    with pytest.raises(ShardReadError, match=r"shard-000000.tar: \d+ bytes, the manifest says 10240"):
        next(iter(dataset))


def test_a_replaced_shard_over_http_is_caught_while_streaming(stalling_server, tmp_path: Path) -> None:
    server = stalling_server("none", "silent")
    data = bytearray(server.files["shard-000001.tar"])
    data[600] ^= 1  # inside the first video: same size, same samples
    server.files["shard-000001.tar"] = bytes(data)
    with pytest.raises(ShardReadError, match=rf"{server.url}/shard-000001.tar: SHA-256 .* is not the manifest's"):
        read_rows(server.url)


def test_a_truncated_shard_is_a_clear_stop(tmp_path: Path) -> None:
    """Truncated in the middle of a member: with the manifest's size, refused at open; in a hand-written manifest
    without size and hash, the tar reader's error, named."""
    members = [(f"{i}.{ext}", VIDEO * 40 if ext == "mp4" else label(0)) for i in range(3) for ext in ("mp4", "json")]
    write_tar(tmp_path / "shard-000000.tar", members)
    write_manifest(tmp_path, {"shard-000000.tar": 3})
    data = (tmp_path / "shard-000000.tar").read_bytes()
    (tmp_path / "shard-000000.tar").write_bytes(data[:12000])
    with pytest.raises(ShardReadError, match=f"shard-000000.tar: 12000 bytes, the manifest says {len(data)}"):
        read_rows(str(tmp_path))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][0].update(num_bytes=0, sha256="")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardReadError, match=r"shard-000000.tar: (not a readable tar|1 samples read)"):
        read_rows(str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------------
# 5. Memory bounded by the limit, not the input


class Zeros:
    """A file of zeros to add to a tar without holding it."""

    def read(self, size: int) -> bytes:
        return bytes(size)


def test_an_oversized_member_is_skipped_unread(tmp_path: Path) -> None:
    """A 200 MB member of zeros in a .tar.gz of about 200 kB, against a 10 MB limit: the sample is reported, the
    next one is read, and the reader never holds the member. Peak Python memory is tarfile's 10 kB reads, which
    deflate can expand about 1000-fold (a bound of the reading, the same for a member of 6 GiB)."""
    size = 200 << 20
    with tarfile.open(tmp_path / "shard-000000.tar.gz", "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("00.mp4")
        info.size = size
        tar.addfile(info, Zeros())
        for name, data in [("00.json", label(0)), ("01.mp4", VIDEO), ("01.json", label(1))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert (tmp_path / "shard-000000.tar.gz").stat().st_size < 2 << 20
    write_manifest(tmp_path, {"shard-000000.tar.gz": 2})
    options = ShardReadOptions(max_member_bytes=10 << 20)
    dataset = ShardedVideoDataset(load_manifests(str(tmp_path)), shuffle_buffer=0, options=options)
    tracemalloc.start()
    try:
        rows = list(dataset)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows[0]["error"] == (
        "shard-000000.tar.gz/00.mp4: 00.mp4 is 209715200 bytes, over the 10485760-byte limit "
        "(--shard_max_member_size); not read"
    )
    assert rows[1]["label"] == 1 and rows[1]["media"] == VIDEO
    assert peak < 40 << 20  # 31 MB measured


# ---------------------------------------------------------------------------------------------------------------------
# The command line: a shard failure is one line and exit 1; the epoch logged after a resume


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    model_dir = tmp_path_factory.mktemp("model")
    AVBertForVideoClassification(AVBertConfig(**TINY, num_clips=2, num_labels=2)).save_pretrained(model_dir)
    make_tiny_processor().save_pretrained(model_dir)
    return model_dir


def train_args(model: Path, shards: str, out: Path, *extra: str) -> list[str]:
    return [
        *("--recipe", "kinetics-sounds", "--model", str(model), "--output_dir", str(out)),
        *("--train_shards", shards, "--eval_shards", shards, "--per_device_train_batch_size", "2"),
        *("--per_device_eval_batch_size", "4", "--use_cpu", "--report_to", "none", "--eval_strategy", "no"),
        *("--seed", "0", "--shard_timeout", "1", "--shard_retries", "0", *extra),
    ]


def test_avbert_train_stops_with_one_line_on_a_damaged_shard(
    corpus: Path,  # noqa: F811
    tiny_model: Path,
    tmp_path: Path,
    capsys,
) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    for shard in (corpus / "shards").iterdir():
        (shards / shard.name).write_bytes(shard.read_bytes())
    data = bytearray((shards / "shard-000002.tar").read_bytes())
    data[1000:1010] = b"x" * 10  # inside the first video: same size, same samples, other bytes
    (shards / "shard-000002.tar").write_bytes(bytes(data))
    args = train_args(tiny_model, str(shards), tmp_path / "out", "--max_steps", "8", "--save_strategy", "no")
    assert train_main([*args, "--dataloader_num_workers", "2"]) == 1
    errors = re.findall(r"avbert-train: error: (.*)\n(.*)", capsys.readouterr().err)  # after a progress bar's \r
    assert len(errors) == 1 and "shard-000002.tar: SHA-256" in errors[0][0] and "not the manifest's" in errors[0][0]
    assert "Traceback" not in errors[0][1]


def test_avbert_train_refuses_a_manifest_that_holds_a_command(
    corpus: Path,  # noqa: F811
    tiny_model: Path,
    tmp_path: Path,
    capsys,
) -> None:
    """The trial's run exited 0 after running the manifest's command; now nothing runs and the exit status is 1."""
    shards, marker = tmp_path / "shards", tmp_path / "MARKER"
    shards.mkdir()
    for shard in (corpus / "shards").iterdir():
        (shards / shard.name).symlink_to(shard)
    data = json.loads((corpus / "shards" / "manifest.json").read_text())
    data["shards"][0]["url"] = f"pipe:touch {marker}; cat {corpus}/shards/shard-000000.tar"
    (shards / "manifest.json").unlink()
    (shards / "manifest.json").write_text(json.dumps(data))
    assert train_main(train_args(tiny_model, str(shards), tmp_path / "out", "--max_steps", "1")) == 1
    error = capsys.readouterr().err
    assert f"avbert-train: error: {shards}/manifest.json: shard entry 'pipe:touch {marker};" in error
    assert not marker.exists() and not (tmp_path / "out" / "model.safetensors").exists()


def test_the_epoch_logged_after_a_resume_counts_the_finished_batches(
    corpus: Path,  # noqa: F811
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    """8 batches per epoch (16 samples, batches of 2, one reader); interrupted after step 3, resumed to step 6: the
    resumed steps are at 4/8, 5/8, 6/8 of the epoch (the trial saw 1/8, 2/8, 3/8)."""
    out = tmp_path / "out"
    common = ("--save_strategy", "steps", "--save_steps", "3", "--logging_steps", "1")
    train_run(train_args(tiny_model, str(corpus / "shards"), out, "--max_steps", "3", *common))
    train_run(
        train_args(
            tiny_model, str(corpus / "shards"), out, "--max_steps", "6", "--resume_from_checkpoint", "true", *common
        )
    )
    history = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    epochs = {entry["step"]: entry["epoch"] for entry in history if "loss" in entry}
    assert epochs == {1: 0.125, 2: 0.25, 3: 0.375, 4: 0.5, 5: 0.625, 6: 0.75}
