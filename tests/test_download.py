"""Corpus files: data folder, then cache, then a checksummed download (file:// URLs, no network)."""

from __future__ import annotations

import hashlib

import pytest

from rnnbench.download import DataError, corpus_file


@pytest.fixture
def published(tmp_path):
    """A 'published' file served through a file:// URL, and its SHA-256."""
    source = tmp_path / "server" / "corpus.txt"
    source.parent.mkdir()
    source.write_text("the quick brown fox\n")
    return source.as_uri(), hashlib.sha256(source.read_bytes()).hexdigest()


def test_data_dir_wins_over_cache_and_url(tmp_path, published):
    url, sha = published
    local = tmp_path / "data" / "c" / "corpus.txt"
    local.parent.mkdir(parents=True)
    local.write_text("local copy\n")
    path = corpus_file("c/corpus.txt", url=url, sha256=sha, data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert path == local
    assert not (tmp_path / "cache").exists()  # nothing downloaded


def test_download_is_verified_and_cached(tmp_path, published):
    url, sha = published
    cache = tmp_path / "cache"
    path = corpus_file("c/corpus.txt", url=url, sha256=sha, data_dir=tmp_path / "empty", cache_dir=cache)
    assert path == cache / "c" / "corpus.txt" and path.read_text() == "the quick brown fox\n"
    # Second call: served from the cache even when the URL is gone.
    assert corpus_file("c/corpus.txt", url="file:///nonexistent/x", sha256=sha, cache_dir=cache) == path
    assert [p.name for p in path.parent.iterdir()] == ["corpus.txt"]  # no temporary files left


def test_checksum_mismatch_deletes_the_download(tmp_path, published):
    url, _ = published
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="SHA-256 .* expected 0{64}: it was deleted"):
        corpus_file("c/corpus.txt", url=url, sha256="0" * 64, cache_dir=cache)
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_offline_error_names_the_file_and_the_option(tmp_path, monkeypatch):
    monkeypatch.delenv("RNNBENCH_DATA_DIR", raising=False)  # a data dir holding PTB would answer first
    with pytest.raises(DataError, match=r"ptb/ptb.train.txt not found .*task.data_dir=/path/to/data"):
        corpus_file("ptb/ptb.train.txt", url=(tmp_path / "missing").as_uri(), cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="has no download location"):
        corpus_file("mine.txt", cache_dir=tmp_path / "cache")


def test_environment_variable_sets_the_data_dir(tmp_path, monkeypatch):
    (tmp_path / "x.txt").write_text("x")
    monkeypatch.setenv("RNNBENCH_DATA_DIR", str(tmp_path))
    assert corpus_file("x.txt", cache_dir=tmp_path / "cache") == tmp_path / "x.txt"
