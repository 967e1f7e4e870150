"""Hostile clients against a real uvicorn (issue 20): bodies that never declare their size, no token,
decompression bombs, text that explodes when normalised, more clients than slots, and a bundle the
runtime refuses. Each gets a 4xx or a 503 with a reason, never a 5xx, and the service stays up."""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time
import urllib.parse

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from test_serve import _start
from voices import make_bundle


def _raw(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _reply(conn: socket.socket, until: bytes = b"\r\n\r\n") -> bytes:
    reply = b""
    while until not in reply and (chunk := conn.recv(4096)):
        reply += chunk
    return reply


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A service with a token, small upload limits and one synthesis slot."""
    root = tmp_path_factory.mktemp("guarded")
    make_bundle(root / "models" / "champion", seed=1, version="1")
    process, url = _start(root, "-S", "serve.max_upload_mb=0.25", "-S", "serve.max_concurrent=1",
                          "-S", "serve.max_image_pixels=1000000", "-S", "serve.max_reference_seconds=5",
                          # long pauses: a stream no one reads fills the socket and holds its slot
                          "-S", "serve.sentence_pause=20",
                          env={"POLYVOX_TOKEN": "s3cret"})
    yield root, url, {"Authorization": "Bearer s3cret"}
    process.terminate()
    process.wait(timeout=30)


def test_no_token_is_refused_before_a_chunked_body_is_read(guarded):
    _, url, _ = guarded
    with socket.create_connection(_raw(url), timeout=10) as conn:
        # a chunked upload (no Content-Length), of which only the first chunk is ever sent
        conn.sendall(b"POST /synthesize HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n10\r\n--b\r\n0123456789a\r\n")
        reply = _reply(conn)
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]


def test_a_chunked_body_past_the_limit_is_cut_off(guarded):
    _, url, auth = guarded
    limit = int(2 * 0.25 * 2**20 + 4 * 2000 + 2**16)
    sent, reply = 0, b""
    with socket.create_connection(_raw(url), timeout=10) as conn:
        conn.sendall(b"POST /synthesize HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                     b"Authorization: " + auth["Authorization"].encode() + b"\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        # a well-formed upload whose file part never ends: only the byte count can stop it
        part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        conn.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        chunk = b"x" * 65536
        try:
            while sent < 200 * limit:  # a client that would send 200× the limit (120 MB)
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                conn.setblocking(False)
                try:
                    reply += conn.recv(4096)
                except BlockingIOError:
                    pass
                finally:
                    conn.setblocking(True)
                if reply:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service stopped reading and closed: what it answered is in the socket
        conn.settimeout(10)
        try:
            reply += _reply(conn, b"}")
        except (ConnectionResetError, socket.timeout):
            pass
    assert reply.startswith(b"HTTP/1.1 413"), reply[:600]
    # refused once the limit was passed, not after the whole body: what was sent beyond it is what
    # the loopback's socket buffers took in (a few MB) before the service's answer came back
    assert sent < 50 * limit, (sent, limit)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _audio(seconds: float, rate: int, fmt: str, noise: bool = False) -> bytes:
    buffer = io.BytesIO()
    samples = int(seconds * rate)
    signal = np.random.default_rng(0).uniform(-0.5, 0.5, samples) if noise else np.zeros(samples)
    sf.write(buffer, signal.astype("float32"), rate, format=fmt)
    return buffer.getvalue()


def _tiff() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("files, status, says", [
    ({"image": ("bomb.png", _png(2000, 2000), "image/png")}, 413, "pixels"),  # 4 Mpx in a few KB
    ({"image": ("photo.tiff", _tiff(), "image/tiff")}, 415, "not a picture in PNG"),
    ({"image": ("broken.png", _png(64, 64)[:60], "image/png")}, 415, "not a picture"),
    ({"reference_audio": ("silence.flac", _audio(120, 16000, "FLAC"), "audio/flac")}, 413, "serve.max_reference_seconds"),
    ({"reference_audio": ("slow.wav", _audio(50, 1, "WAV"), "audio/wav")}, 422, "1 Hz"),
    ({"reference_audio": ("cut.flac", _audio(2, 16000, "FLAC", noise=True)[:2000], "audio/flac")}, 415, "reference_audio"),
])
def test_bombs_and_odd_formats_are_refused_before_they_are_decoded(guarded, files, status, says):
    _, url, auth = guarded
    started = time.monotonic()
    response = httpx.post(f"{url}/synthesize", data={"text": "Hello there.", "speaker": "alice"}, files=files,
                          headers=auth, timeout=60)
    assert response.status_code == status and says in response.json()["detail"], (response.status_code, response.text)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("text, says", [
    ("1999 " * 150 + ".", "phoneme tokens"),  # 750 characters that normalise to thousands of tokens
    ("a. " * 666, "sentences"),
])
def test_text_that_explodes_is_refused(guarded, text, says):
    _, url, auth = guarded
    response = httpx.post(f"{url}/synthesize", data={"text": text}, headers=auth, timeout=60)
    assert response.status_code == 413 and says in response.json()["detail"], response.text


def test_more_syntheses_than_slots_get_503_and_health_stays_quick(guarded):
    _, url, auth = guarded
    # One synthesis holds the only slot while it renders (34 long sentences: several seconds).
    long_text = "Go on and on and on and on, said the old man to the sea. " * 34
    holder = threading.Thread(target=lambda: httpx.post(f"{url}/synthesize", data={"text": long_text, "speaker": "bob"},
                                                        headers=auth, timeout=120))
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while (busy := httpx.post(f"{url}/synthesize", data={"text": "Me too."}, headers=auth, timeout=60)).status_code != 503:
            assert time.monotonic() < deadline, "a second synthesis got a slot that was taken"
            time.sleep(0.1)
        assert busy.headers["retry-after"] == "1" and "serve.max_concurrent" in busy.json()["detail"]
        started = time.monotonic()
        assert httpx.get(f"{url}/healthz", timeout=5).json()["status"] == "ok"
        assert time.monotonic() - started < 1.0
    finally:
        holder.join()  # its synthesis ends: the slot is free again
    assert httpx.post(f"{url}/synthesize", data={"text": "Now."}, headers=auth, timeout=60).status_code == 200
    assert "polyvox_refused_busy_total" in httpx.get(f"{url}/metrics").text


@pytest.fixture(scope="module")
def streaming_process(tmp_path_factory):
    """One synthesis slot, long pauses (a stream of 60 sentences is ~13 MB, far more than the
    loopback's socket buffers hold), a short grace for slow readers, and no token."""
    root = tmp_path_factory.mktemp("streaming")
    make_bundle(root / "models" / "champion", seed=1, version="1")
    process, url = _start(root, "-S", "serve.max_concurrent=1", "-S", "serve.sentence_pause=5",
                          "-S", "serve.stream_grace_seconds=1")
    yield process, url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def streaming(streaming_process):
    return streaming_process[1]


def _counter(url: str, name: str) -> float:
    lines = [line for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[1]) if lines else 0.0


def _slow_reader(url: str, text: str) -> socket.socket:
    """A client that asks for a stream and never reads (a tiny receive buffer)."""
    body = urllib.parse.urlencode({"text": text, "speaker": "bob", "stream": "true"}).encode()
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.connect(_raw(url))
    conn.sendall(b"POST /synthesize HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return conn


def test_slow_readers_hold_no_slot_and_are_cut_off(streaming):
    """Issue 31: two clients that stream and never read held both slots for as long as they stayed
    connected (every good request got 503). Now a slot is held while synthesis runs, never while a
    client reads, and a client slower than real time is disconnected."""
    url = streaming
    readers = [_slow_reader(url, "Go on. " * 60) for _ in range(2)]
    try:
        deadline = time.monotonic() + 20
        while (good := httpx.post(f"{url}/synthesize", data={"text": "Hello there."}, timeout=60)).status_code != 200:
            assert good.status_code == 503, good.text
            assert time.monotonic() < deadline, "slow readers kept the synthesis slot"
            time.sleep(0.2)
        deadline = time.monotonic() + 30  # the first reader's stream was cut off (the second got a 503)
        while _counter(url, "polyvox_slow_readers_cut_off_total") < 1:
            assert time.monotonic() < deadline, "a client reading nothing was never cut off"
            time.sleep(0.5)
        full = 60 * 5 * 22050 * 2  # the pauses alone of one whole stream, in bytes
        for conn in readers:  # each was cut off: what it can still read ends well before the whole stream
            conn.settimeout(30)
            received = 0
            try:
                while chunk := conn.recv(1 << 16):
                    received += len(chunk)
                    assert received < full / 2, "the service kept sending to a client slower than real time"
            except ConnectionResetError:
                pass
            assert received > 0
    finally:
        for conn in readers:
            conn.close()
    assert httpx.post(f"{url}/synthesize", data={"text": "Still serving."}, timeout=60).status_code == 200
def test_a_bundle_the_runtime_refuses_keeps_the_old_voice_and_says_why(tmp_path):
    champion = tmp_path / "models" / "champion"
    make_bundle(champion, seed=1, version="1")
    process, url = _start(tmp_path)
    try:
        broken = make_bundle(tmp_path / "models" / "next", seed=2, version="2")
        meta = json.loads((broken / "bundle.json").read_text())
        (broken / "bundle.json").write_text(json.dumps({**meta, "onnx": True}))  # graphs onnxruntime cannot parse
        for member in json.loads((broken / "voice.json").read_text())["members"]:
            (broken / "onnx" / member["name"]).mkdir(parents=True)
            for graph in ("encoder.onnx", "decoder.onnx"):
                (broken / "onnx" / member["name"] / graph).write_bytes(b"not a protobuf")
        shutil.rmtree(champion)
        broken.rename(champion)
        deadline = time.monotonic() + 30
        while (health := httpx.get(f"{url}/healthz").json())["reload_error"] is None:
            assert time.monotonic() < deadline, "the failed reload was never reported"
            time.sleep(0.2)
        assert health["version"] == "1" and health["status"] == "ok", health  # the old voice, still served
        assert str(tmp_path) not in health["reload_error"] and "<bundle>" in health["reload_error"], health
        assert httpx.post(f"{url}/synthesize", data={"text": "Still here."}, timeout=60).status_code == 200
        failures = next(line for line in httpx.get(f"{url}/metrics").text.splitlines()
                        if line.startswith("polyvox_reload_failures "))
        assert float(failures.split()[1]) >= 1, failures
        time.sleep(1.0)  # the poller lives on: it keeps trying (and failing) at every poll
        assert process.poll() is None
        assert float(next(line for line in httpx.get(f"{url}/metrics").text.splitlines()
                          if line.startswith("polyvox_reload_failures ")).split()[1]) > float(failures.split()[1])
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_service_starts_on_the_bundle_a_killed_swap_left_aside(tmp_path):
    champion = tmp_path / "models" / "champion"
    make_bundle(champion, seed=1, version="1")
    champion.rename(tmp_path / "models" / ".champion-old")  # a promote killed between its two renames
    process, url = _start(tmp_path)
    try:
        assert httpx.get(f"{url}/healthz").json()["version"] == "1" and champion.is_dir()
    finally:
        process.terminate()
        process.wait(timeout=30)


def _peak_rss_mb(pid: int) -> float:
    status = open(f"/proc/{pid}/status").read()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def test_uploads_in_flight_do_not_each_cost_a_decoded_copy(streaming_process):
    """Issue 31: uploads were decoded before a slot was taken, all channels at once, so 8 concurrent
    75 KB silent 8-channel 192 kHz FLACs took ~207 MB each (941 → 2601 MB). Now headers are checked
    first, decoding waits for a slot and averages the channels block by block."""
    process, url = streaming_process
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((30 * 192000, 8), dtype="float32"), 192000, format="FLAC")  # silent: tiny
    flac = buffer.getvalue()
    assert len(flac) < 200_000
    before = _peak_rss_mb(process.pid)
    statuses = []

    def post() -> None:
        response = httpx.post(f"{url}/synthesize", data={"text": "Hi."}, timeout=120,
                              files={"reference_audio": ("r.flac", flac, "audio/flac")})
        statuses.append(response.status_code)

    clients = [threading.Thread(target=post) for _ in range(8)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    grown = _peak_rss_mb(process.pid) - before
    print(f"peak resident memory grew {grown:.0f} MB")
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    assert grown < 300, f"peak resident memory grew {grown:.0f} MB for 8 uploads in flight"


def test_the_poller_leaves_a_live_promote_swap_alone_and_staging_leftovers_are_removed(tmp_path):
    """Issue 31: the bundle poller renamed `.champion-old` back into place whenever `champion` was
    missing, which undoes a live promote caught between its two renames (reproduced here with the
    writer paused between them); and `models/.champion-*` staging folders of a killed download were
    never removed."""
    from polyvox.lock import workspace_lock

    champion = tmp_path / "models" / "champion"
    make_bundle(champion, seed=1, version="1")
    leftover = tmp_path / "models" / ".champion-k1ll3d"  # a download killed with kill -9
    (leftover / "voice").mkdir(parents=True)
    process, url = _start(tmp_path)
    try:
        assert not leftover.exists() and champion.is_dir()  # removed when the service started
        with workspace_lock(tmp_path, "a promote, paused between its two renames"):
            champion.rename(tmp_path / "models" / ".champion-old")  # the first rename of replace_folder
            time.sleep(2.0)  # several polls (serve.reload_seconds 0.3)
            assert not champion.exists(), "the poller undid a live swap"
            assert httpx.get(f"{url}/healthz").json()["version"] == "1"  # the loaded voice is still served
            make_bundle(tmp_path / "models" / "next", seed=2, version="2")
            (tmp_path / "models" / "next").rename(champion)  # the second rename
            shutil.rmtree(tmp_path / "models" / ".champion-old")
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/healthz").json()["version"] != "2":
            assert time.monotonic() < deadline, "the new bundle was never served"
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_bodies_that_never_arrive_and_idle_connections_are_closed(tmp_path):
    """Issue 31: a Content-Length larger than the body held a connection forever, and 200 idle
    connections were all kept 30 s. Now the body must keep arriving (serve.body_seconds: 408), a
    request head must be complete in time, and an idle connection is closed (serve.idle_seconds)."""
    make_bundle(tmp_path / "models" / "champion", seed=1)
    process, url = _start(tmp_path, "-S", "serve.body_seconds=2", "-S", "serve.idle_seconds=1")
    try:
        started = time.monotonic()
        with socket.create_connection(_raw(url), timeout=20) as conn:
            conn.sendall(b"POST /synthesize HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: 1000\r\n\r\ntext=Hello")  # 990 bytes promised, never sent
            reply = _reply(conn)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert time.monotonic() - started < 10
        idle = [socket.create_connection(_raw(url), timeout=20) for _ in range(20)]  # never send a byte
        trickle = socket.create_connection(_raw(url), timeout=20)
        trickle.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends
        time.sleep(3.5)
        for conn in [*idle, trickle]:
            assert conn.recv(100) == b"", "a connection that sent no request was kept open"
            conn.close()
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # good clients are still served
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_bundle_damage_is_reported_while_the_loaded_voice_serves_on(tmp_path):
    """Issue 31: truncating a file of the bundle left /healthz "ok", and deleting bundle.json was
    silent (POST /reload answered 200 `{"reloaded": false}`). bundle.json records every file's size
    and sha256; the service checks them at each poll and says what is wrong."""
    champion = tmp_path / "models" / "champion"
    make_bundle(champion, seed=1, version="1")
    listed = json.loads((champion / "bundle.json").read_text())["files"]
    assert "voice.json" in listed and any(name.endswith("best.pt") for name in listed)
    process, url = _start(tmp_path)
    try:
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "version": "1", "reload_error": None, "damage": []}
        weights = next(name for name in listed if name.endswith("best.pt"))
        original = (champion / weights).read_bytes()
        (champion / weights).write_bytes(original[:100])  # truncated
        deadline = time.monotonic() + 15
        while not (health := httpx.get(f"{url}/healthz").json())["damage"]:
            assert time.monotonic() < deadline, "the truncated file was never reported"
            time.sleep(0.2)
        assert health["status"] == "degraded" and health["version"] == "1"
        assert health["damage"] == [f"{weights}: 100 bytes, bundle.json says {len(original)}"], health
        assert httpx.post(f"{url}/synthesize", data={"text": "Still here."}, timeout=60).status_code == 200
        refused = httpx.post(f"{url}/reload", timeout=60)
        assert refused.status_code == 503 and weights in refused.json()["detail"], refused.text
        (champion / weights).write_bytes(original)
        deadline = time.monotonic() + 15
        while httpx.get(f"{url}/healthz").json()["damage"]:
            assert time.monotonic() < deadline, "the mended file was never seen"
            time.sleep(0.2)
        (champion / "bundle.json").unlink()
        deadline = time.monotonic() + 15
        while (health := httpx.get(f"{url}/healthz").json())["damage"] != ["bundle.json: missing"]:
            assert time.monotonic() < deadline, "a missing bundle.json was never reported"
            time.sleep(0.2)
        assert health["status"] == "degraded"
        missing = httpx.post(f"{url}/reload", timeout=60)
        assert missing.status_code == 503 and "bundle.json is missing" in missing.json()["detail"], missing.text
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_heap_is_given_back_after_uploads_at_most_once_a_second(monkeypatch):
    """glibc (this machine's allocator) takes the arena bound, and the trimmer calls malloc_trim
    after a request with an upload, not more than once per interval, whatever the number of threads
    releasing at once."""
    import ctypes.util
    import platform

    from polyvox.serve import memory

    if platform.system() != "Linux" or "musl" in (ctypes.util.find_library("c") or ""):
        pytest.skip("the allocator is not glibc's")
    assert memory.limit_arenas(8)  # glibc accepts the bound (8: the test process keeps its usual arenas)
    calls = []
    monkeypatch.setattr(memory, "_libc", type("libc", (), {"malloc_trim": staticmethod(calls.append)})())
    trimmer = memory.Trimmer(every=30.0)
    threads = [threading.Thread(target=trimmer.after_request) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [0]
    trimmer._last -= 31.0
    assert trimmer.after_request() and calls == [0, 0]
