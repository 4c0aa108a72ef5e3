"""Slices read while a study arrives (triage.inference.slices): load_volume from the cache
gives the same volume as from the files, and never uses a read of a file that changed since."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from triage.inference.slices import SliceCache
from triage.inference.volume import load_volume
from triage.synth.ct import write_head_ct


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("head")
    study = write_head_ct(
        out, hemorrhage=True, seed=5, patient_id="C1", accession="C1", n_slices=12, size=64
    )
    return list(study.files)


def filled(files: list[Path], **kwargs: int) -> SliceCache:
    cache = SliceCache(**kwargs)
    cache.start()
    for f in files:
        assert cache.offer(f)
    deadline = time.monotonic() + 60
    while cache._queue or cache._state:  # the worker has read every file it kept
        assert time.monotonic() < deadline, "the worker did not read the files"
        time.sleep(0.01)
    return cache


def same(a, b) -> None:
    assert np.array_equal(a.hu, b.hu)
    assert np.array_equal(a.z_positions, b.z_positions)
    assert (a.pixel_spacing, a.slice_thickness, a.series_uid, a.paths, a.normal) == (
        b.pixel_spacing,
        b.slice_thickness,
        b.series_uid,
        b.paths,
        b.normal,
    )


def test_volume_from_the_cache_is_the_volume_from_the_files(head: list[Path]) -> None:
    cache = filled(head)
    try:
        shuffled = head[::-1]  # arrival order does not matter
        same(load_volume(shuffled, cache), load_volume(shuffled))
        assert (cache.hits, cache.misses) == (len(head), 0)
        assert len(cache) == 0 and cache.held_bytes == 0  # taken: the memory is given back
    finally:
        cache.stop()


def test_a_file_changed_after_it_was_read_is_read_again(head: list[Path], tmp_path) -> None:
    files = []
    for f in head:  # a copy of the series, so that one file can be rewritten
        files.append(tmp_path / f.name)
        files[-1].write_bytes(f.read_bytes())
    cache = filled(files)
    try:
        ds = pydicom.dcmread(files[3])
        ds.RescaleIntercept = float(ds.RescaleIntercept) + 100  # other HU for the same file
        tmp = files[3].with_suffix(".new")
        ds.save_as(tmp)
        os.replace(tmp, files[3])  # a new file at the same path
        vol = load_volume(files, cache)
        same(vol, load_volume(files))
        assert (cache.hits, cache.misses) == (len(files) - 1, 1)
    finally:
        cache.stop()


def test_past_its_budget_the_oldest_reads_are_dropped_and_read_again(head: list[Path]) -> None:
    one_slice = 64 * 64 * 4
    cache = filled(head, budget_bytes=3 * one_slice)
    try:
        assert len(cache) == 3 and cache.held_bytes == 3 * one_slice
        same(load_volume(head, cache), load_volume(head))
        assert (cache.hits, cache.misses) == (3, len(head) - 3)
    finally:
        cache.stop()


def test_unreadable_files_are_skipped_as_without_the_cache(head: list[Path], tmp_path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    files = [*head, junk]
    cache = filled(files)
    try:
        same(load_volume(files, cache), load_volume(files))
    finally:
        cache.stop()


def test_discard_forgets_reads_and_queued_paths(head: list[Path]) -> None:
    cache = filled(head)
    try:
        cache.discard([str(f) for f in head])
        assert len(cache) == 0 and cache.held_bytes == 0
        same(load_volume(head, cache), load_volume(head))
        assert cache.hits == 0
    finally:
        cache.stop()
    assert not cache.offer(head[0])  # stopped: nothing is queued


def test_reads_nobody_took_are_dropped_after_their_time(head: list[Path]) -> None:
    """A study no model reads (not routed) does not keep its reads: they go after
    ``max_age_seconds``, at the next arrival (or idle minute)."""
    cache = filled(head[:-1], max_age_seconds=0.0)
    try:
        assert cache.offer(head[-1])  # the next arrival prunes what is too old
        assert all(str(f) not in cache._done for f in head[:-1])
        same(load_volume(head, cache), load_volume(head))
    finally:
        cache.stop()


def test_slices_read_in_position_order_are_taken_without_a_copy(head: list[Path]) -> None:
    """Read ahead in acquisition order (either way), a series' slices lie one after another in
    one array: the volume is a view of it, equal to the one read from the files."""
    for files in (head, head[::-1]):
        cache = filled(files)
        try:
            vol = load_volume(files, cache)
            assert vol.hu.base is not None and not vol.hu.flags.owndata
            same(vol, load_volume(files))
        finally:
            cache.stop()


def test_a_series_with_a_gap_is_stacked_as_before(head: list[Path]) -> None:
    shuffled = [head[i] for i in (0, 2, 1, *range(3, len(head)))]  # arrival out of order
    cache = filled(shuffled)
    try:
        vol = load_volume(head, cache)
        assert vol.hu.flags.owndata  # stacked: a new array
        same(vol, load_volume(head))
    finally:
        cache.stop()
