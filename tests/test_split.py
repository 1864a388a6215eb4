"""The in-memory split and the training ray pool, checked against the .h5 file read independently."""

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fast_anerf.data.anerf_h5 import dilate_mask, open_anerf_h5
from fast_anerf.data.h5_write import write_anerf_h5
from fast_anerf.data.rays import pixel_rays
from fast_anerf.data.split import RayPool, load_split


@pytest.fixture(scope="module")
def two_backgrounds(tiny_data, tmp_path_factory) -> Path:
    """tiny_data's train.h5 with two random backgrounds (``bkgds`` + ``bkgd_idxs``) and no ``sampling_masks``."""
    with open_anerf_h5(tiny_data / "train.h5") as data:
        everything, arrays, n = data.load_all(), dict(data.arrays), data.n_images
    rng = np.random.default_rng(1)
    out = tmp_path_factory.mktemp("split") / "bg.h5"
    keep = ("kp3d", "bones", "skts", "c2ws", "focals", "centers", "rest_pose", "cyls", "ext_scale")
    write_anerf_h5(out, {
        **{k: arrays[k] for k in keep if k in arrays},
        "imgs": everything["imgs"],
        "masks": everything["masks"],
        "bkgds": rng.integers(0, 256, (2, *everything["imgs"].shape[1:]), dtype=np.uint8),
        "bkgd_idxs": np.arange(n) % 2,
    })  # fmt: skip
    return out


@pytest.mark.parametrize("name", ["train", "two_backgrounds"])
def test_ray_pool_batches_equal_the_file(name, tiny_data, two_backgrounds):
    """Every drawn ray: the pixel lies in the image's sampling mask (the stored one, or the dilated mask when the
    file has none), its colour and background are the file's, its ray is that camera's ray through the pixel;
    each batch has ``images_per_batch`` distinct images with equal ray counts, and an epoch uses every image."""
    path = tiny_data / "train.h5" if name == "train" else two_backgrounds
    split = load_split(path)
    pool = RayPool(split, rays_per_batch=60, images_per_batch=4, generator=torch.Generator().manual_seed(0))
    assert split.images_u8.dtype == torch.uint8 and split.sample_pixels.dtype == torch.int32
    with open_anerf_h5(path) as data:
        assert len(pool) == sum(int(data.sampling_mask(i).sum()) for i in range(data.n_images))
        seen = []
        for _ in range(2):  # 8 images, 4 per batch: one epoch
            batch = pool.next_batch()
            images = batch["image_idx"].unique()
            assert len(images) == 4 and (batch["image_idx"].bincount(minlength=8)[images] == 15).all()
            seen += images.tolist()
            for i in images.tolist():
                rows = batch["image_idx"] == i
                ids = batch["pixel_ids"][rows].numpy()
                assert data.sampling_mask(i).reshape(-1)[ids].all()
                c2w = torch.as_tensor(data.arrays["c2ws"][i]).float()
                ref_o, ref_d = pixel_rays(c2w, float(data.arrays["focals"][i]), data.center(i), ids, data.width)
                torch.testing.assert_close(batch["rays_o"][rows], ref_o, rtol=0, atol=1e-6)
                torch.testing.assert_close(batch["rays_d"][rows], ref_d, rtol=0, atol=1e-6)
                np.testing.assert_array_equal(batch["rgb"][rows].numpy() * 255, data.pixels(i, ids).astype(np.float32))
                bg = data.background(i)
                want = np.full((len(ids), 3), 255.0) if bg is None else bg.reshape(-1, 3)[ids].astype(np.float64)
                np.testing.assert_allclose(batch["background"][rows].numpy() * 255, want, atol=1e-4)
        assert sorted(seen) == list(range(8))
    if name == "two_backgrounds":  # the backgrounds differ by image, as bkgd_idxs says
        assert not torch.equal(split.background(0), split.background(1))
        assert torch.equal(split.background(0), split.background(2))


def test_ray_pool_draws_the_trainable_pixels_uniformly(tiny_data):
    """Over many batches, every pixel of an image's sampling mask is drawn, about equally often, and no other."""
    split = load_split(tiny_data / "train.h5")
    pool = RayPool(split, rays_per_batch=8 * 1000, images_per_batch=8, generator=torch.Generator().manual_seed(1))
    hits = torch.zeros(split.n_images, split.height * split.width)
    for _ in range(40):
        b = pool.next_batch()
        hits.index_put_((b["image_idx"], b["pixel_ids"]), torch.ones(len(b["pixel_ids"])), accumulate=True)
    with open_anerf_h5(tiny_data / "train.h5") as data:
        for i in range(split.n_images):
            inside = torch.from_numpy(data.sampling_mask(i).reshape(-1))
            assert (hits[i][~inside] == 0).all() and (hits[i][inside] > 0).all()
            expected = 40 * 1000 / int(inside.sum())  # draws per pixel
            # Uniform draws give Poisson counts (std = sqrt(mean)); a biased draw spreads them much wider.
            assert float(hits[i][inside].std()) < 1.3 * expected**0.5


def test_split_without_sampling_masks_uses_the_dilated_masks(two_backgrounds):
    split = load_split(two_backgrounds)
    with open_anerf_h5(two_backgrounds) as data:
        assert "sampling_masks" not in data.keys
        expected = [np.flatnonzero(dilate_mask(data.mask(i))) for i in range(data.n_images)]
    np.testing.assert_array_equal(split.sample_pixels.numpy(), np.concatenate(expected))
    np.testing.assert_array_equal(split.sample_counts.numpy(), [len(e) for e in expected])


def file_mapped_at(address: int) -> str | None:
    """The file mapped at ``address`` of this process (``/proc/self/maps``), or None."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return fields[5] if len(fields) > 5 else None
    return None


def test_images_larger_than_the_free_memory_are_mapped_from_a_disk_copy(tiny_data, tmp_path, monkeypatch, capsys):
    """When a file's images exceed the free memory, training maps them from an uncompressed copy in the cache:
    the same pixels and the same batches, the copy built once and reused, replaced when the file changes; a
    disk without room for it is one line naming the folder and the fixes."""
    import shutil

    import fast_anerf.data.image_cache as image_cache
    import fast_anerf.data.split as split_module
    from fast_anerf.cli import entrypoint

    source = tmp_path / "train.h5"
    shutil.copy(tiny_data / "train.h5", source)
    monkeypatch.setenv("FAST_ANERF_CACHE", str(tmp_path / "cache"))
    in_memory = load_split(source)
    need = 8 * 48 * 48 * 3  # tiny_data's train.h5: 8 images of 48x48, 3 bytes per pixel (training keeps no masks)
    monkeypatch.setattr(split_module, "available_memory", lambda: need - 1)
    mapped = load_split(source, keep_masks=False)
    copies = list((tmp_path / "cache" / "images").glob("train-*.npy"))
    assert len(copies) == 1 and "reading them from a new uncompressed copy" in capsys.readouterr().out
    assert file_mapped_at(mapped.images_u8.data_ptr()) == str(copies[0])  # the pixels live in the file's pages
    assert torch.equal(mapped.images_u8, in_memory.images_u8)
    pools = [RayPool(s, 64, 4, torch.Generator().manual_seed(2)) for s in (in_memory, mapped)]
    for _ in range(3):
        a, b = (pool.next_batch() for pool in pools)
        assert all(torch.equal(a[k], b[k]) for k in a)
    built = copies[0].stat().st_mtime_ns
    load_split(source, keep_masks=False)  # reused, not rebuilt
    assert copies[0].stat().st_mtime_ns == built and "from the uncompressed copy" in capsys.readouterr().out
    # A damaged copy (cut short) is rebuilt, not trusted.
    copies[0].write_bytes(copies[0].read_bytes()[:200])
    assert torch.equal(load_split(source, keep_masks=False).images_u8, in_memory.images_u8)
    assert "from a new uncompressed copy" in capsys.readouterr().out
    built = copies[0].stat().st_mtime_ns
    # Training runs from the copy, from the CLI.
    assert entrypoint(["train", "--data", str(source), "--out", str(tmp_path / "run"), "--steps", "3"]) == 0
    # The file changes: a new copy replaces the stale one.
    os.utime(source, ns=(built + 10**9, built + 10**9))
    load_split(source, keep_masks=False)
    fresh = list((tmp_path / "cache" / "images").glob("train-*.npy"))
    assert len(fresh) == 1 and fresh != copies
    # No room on the disk for the copy.
    os.utime(source, ns=(built + 2 * 10**9, built + 2 * 10**9))
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda _: SimpleNamespace(free=10))
    out = tmp_path / "run2"
    assert entrypoint(["train", "--data", str(source), "--out", str(out), "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{source}: its images do not fit in the free memory, and their disk copy" in err and "\n" not in err
    assert f"free in {tmp_path / 'cache' / 'images'}; set FAST_ANERF_CACHE" in err and not out.exists()
