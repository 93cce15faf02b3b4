"""torch.compile's artifacts in the cache folder (pipeline/compile_cache.py): one file per tier and size, handed back
to torch at the next start; a damaged file costs a compile, never the image."""

import torch

from fluxdepth_ui.pipeline import compile_cache


def test_saved_artifacts_are_loaded_by_a_later_start_and_a_bad_file_is_skipped(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"graphs-and-kernels", None))
    path = compile_cache.save_compile_artifacts(str(tmp_path), "fp8", cpu, 1024, 1024, False)
    assert path and path.endswith("-1024x1024.bin") and open(path, "rb").read() == b"graphs-and-kernels"
    assert compile_cache.artifacts_files(str(tmp_path), "bf16", cpu) == []  # another tier's are not its own
    handed = []

    def load(data):
        if data == b"damaged":
            raise RuntimeError("unpickling failed")
        handed.append(data)
        return object()

    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", load)
    (tmp_path / "torch-compile" / "artifacts" / (path.rsplit("/", 1)[1].replace("1024x1024", "64x64"))).write_bytes(
        b"damaged")
    assert compile_cache.load_compile_artifacts(str(tmp_path), "fp8", cpu) == 1
    assert handed == [b"graphs-and-kernels"]


def test_nothing_to_save_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)
    assert compile_cache.save_compile_artifacts(str(tmp_path), "fp8", torch.device("cpu"), 64, 64, True) is None
    assert not (tmp_path / "torch-compile").exists()
