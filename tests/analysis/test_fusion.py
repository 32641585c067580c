"""IHS and Laplacian-pyramid fusion of SIMS colours with a TEM image, and the metrics.

The scene is simulated (li2co3-particles): a bright-field TEM image (1024^2, 1.5 nm
pixels) inside a four-species SIMS map (6Li, 7Li, 12C, 16O) registered onto it; the
colours are brought to the TEM grid and averaged to 8x coarser pixels (12 nm, the
map's resolution): the multispectral input at ratio 8.
"""

from __future__ import annotations

import numpy as np
import pytest

from temsims.analysis.fusion import (
    ihs_fuse,
    laplacian_pyramid,
    laplacian_pyramid_fuse,
    reconstruct_laplacian,
    species_to_rgb,
    upsample_linear,
)
from temsims.analysis.geometry import SimsMapGeometry, TemImageGeometry
from temsims.analysis.metrics import (
    correlation_coefficient,
    degrade,
    ergas,
    fusion_metrics,
    psnr,
    q_index,
    spectral_angle_mapper,
    ssim,
)
from temsims.analysis.registration import register_sims_to_tem, warp_sims_to_tem
from temsims.ioc.physics import sims as sp
from temsims.ioc.physics.materials import isotope_mass_u
from temsims.ioc.physics.specimen import build_specimen
from temsims.ioc.physics.tem_optics import ImageGeometry, ImageRenderer

RATIO = 8
SPECIES = ("6Li", "7Li", "12C", "16O")


@pytest.fixture(scope="module")
def scene():
    specimen = build_specimen("li2co3-particles", seed=5)
    rng = np.random.default_rng(7)
    tem_truth = ImageGeometry(centre_x_um=0.0, centre_y_um=0.0, fov_um=1.536, size=1024)
    bf = ImageRenderer(specimen).acquire(tem_truth, 400.0, rng)
    scan = sp.ScanGeometry(128, 128, 1.6, centre_x_nm=0.0, centre_y_nm=0.0)
    plan = sp.FramePlan(specimen, scan, tuple(isotope_mass_u(s) for s in SPECIES), 5.0, 1e-3,
                        20.0, 25.5, 1, True, np.zeros(specimen.shape, np.float32),
                        # Without the probe halo (decision 0040): its dim mixture of
                        # every species over the bare film, where the map was black,
                        # puts the film's pixels into the spectral angle (35 deg for
                        # < 25; subtracting the halo left 35): open, see 0040.
                        params=sp.SimsParameters(drift_nm_per_min=0.0, halo_fraction=0.0))
    maps = np.stack(plan.render(rng)).astype(np.float32)
    sims_geo = SimsMapGeometry(128, 128, 1.6, 0.0, 0.0)
    tem_geo = TemImageGeometry(1024, 1.536, 0.0, 0.0)
    reg = register_sims_to_tem(maps[0] + maps[1], bf, sims_geo, tem_geo)
    rgb_map = species_to_rgb(maps)
    on_tem = warp_sims_to_tem(np.moveaxis(rgb_map, -1, 0), reg, bf.shape)
    assert np.isfinite(on_tem).all()  # the map covers the whole TEM field
    ms = degrade(np.moveaxis(on_tem, 0, -1), (1024 // RATIO, 1024 // RATIO)).astype(np.float32)
    pan = -bf  # bright = material, like the Li colours
    return pan, ms


def test_species_to_rgb_shape_range_and_colours():
    maps = np.zeros((4, 10, 12), np.float32)
    maps[0, 2, 3] = 5.0
    maps[1, 4, 5] = 7.0
    maps[2, 6, 7] = 1.0
    maps[3, 8, 9] = 2.0
    maps[0, 0, 0] = -1  # unacquired: black
    rgb = species_to_rgb(maps, normalise="max")
    assert rgb.shape == (10, 12, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    np.testing.assert_allclose(rgb[2, 3], (1, 0, 0))
    np.testing.assert_allclose(rgb[4, 5], (0, 1, 0))
    assert rgb[0, 0].sum() == 0
    rgb2 = species_to_rgb(maps[:2], colors=[(0, 0, 1), (1, 1, 1)], normalise="none")
    np.testing.assert_allclose(rgb2[2, 3], (0, 0, 1))
    with pytest.raises(ValueError, match="colors"):
        species_to_rgb(maps, colors=[(1, 0, 0)])
    with pytest.raises(ValueError, match=r"\(k, h, w\)"):
        species_to_rgb(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="normalise"):
        species_to_rgb(maps, normalise="log")


def test_fusions_keep_the_pan_detail_and_the_map_colours(scene):
    pan, ms = scene
    rows = {}
    for name, fuse in (("IHS", ihs_fuse), ("Laplacian", laplacian_pyramid_fuse)):
        fused = fuse(pan, ms)
        assert fused.shape == (*pan.shape, 3) and fused.dtype == np.float32
        assert 0.0 <= fused.min() and fused.max() <= 1.0
        rows[name] = fusion_metrics(fused, ms, pan, RATIO)
    keys = ("spatial_cc", "spatial_cc_highpass", "cc", "ssim", "psnr_db", "sam_deg", "ergas",
            "q")
    print("\nfusion metrics, 1024^2 bright-field TEM (inverted) + 128^2 4-species SIMS colours")
    print(f"{'metric':<22}" + "".join(f"{n:>12}" for n in rows))
    for k in keys:
        print(f"{k:<22}" + "".join(f"{rows[n][k]:>12.4f}" for n in rows))
    for m in rows.values():
        assert m["spatial_cc"] > 0.75       # the TEM's structure is in the result
        assert m["spatial_cc_highpass"] > 0.5
        # Colours kept. The bounds are loose because the scene is sparse: most of the
        # map is dark film, where the pan's counting noise is all there is, so
        # relative errors (ERGAS) and angles of near-black pixels (SAM) are large.
        assert m["sam_deg"] < 25.0
        assert m["ergas"] < 30.0
        assert m["cc"] > 0.85
    # The pyramid keeps the colours' coarse level: the spectrally more faithful one.
    assert rows["Laplacian"]["sam_deg"] < rows["IHS"]["sam_deg"]
    assert rows["Laplacian"]["q"] > rows["IHS"]["q"]


def test_laplacian_with_identical_inputs_reconstructs_exactly():
    rng = np.random.default_rng(1)
    pan = rng.random((130, 101)).astype(np.float32)
    same = np.repeat(pan[..., None], 3, axis=-1)
    fused = laplacian_pyramid_fuse(pan, same, levels=4, clip=False)
    np.testing.assert_allclose(fused, same, atol=1e-6)
    pyramid = laplacian_pyramid(pan, 5)
    np.testing.assert_allclose(reconstruct_laplacian(pyramid), pan, atol=1e-6)
    # The telescoped fusion equals the explicit pyramid reconstruction.
    coarse = rng.random((17, 13, 3)).astype(np.float32)
    fused = laplacian_pyramid_fuse(pan, coarse, levels=3, histogram_match=False, clip=False)
    details = laplacian_pyramid(pan, 3)[:-1]
    explicit = np.stack([reconstruct_laplacian([*details, coarse[..., c]]) for c in range(3)],
                        axis=-1)
    np.testing.assert_allclose(fused, explicit, atol=1e-5)


def test_ihs_of_a_grey_image_with_itself_is_the_image():
    rng = np.random.default_rng(2)
    pan = rng.random((64, 64)).astype(np.float32)
    fused = ihs_fuse(pan, np.repeat(pan[..., None], 3, axis=-1), histogram_match="moments")
    np.testing.assert_allclose(fused, np.repeat(pan[..., None], 3, axis=-1), atol=1e-5)


def test_upsampling_matches_skimage_resize():
    from skimage.transform import resize

    rng = np.random.default_rng(3)
    small = rng.random((16, 12, 3)).astype(np.float32)
    for shape in ((128, 96), (50, 37)):
        ref = resize(small, (*shape, 3), order=1, mode="edge", anti_aliasing=False)
        np.testing.assert_allclose(upsample_linear(small, shape), ref, atol=1e-6)


def test_species_maps_are_accepted_and_bad_input_refused():
    rng = np.random.default_rng(4)
    pan = rng.random((64, 64)).astype(np.float32)
    species = rng.poisson(5, (4, 16, 16)).astype(np.float32)
    for fuse in (ihs_fuse, laplacian_pyramid_fuse):
        assert fuse(pan, species).shape == (64, 64, 3)
        with pytest.raises(ValueError, match="2-D"):
            fuse(np.zeros((2, 64, 64)), species)
        with pytest.raises(ValueError, match="multispectral"):
            fuse(pan, np.zeros((16, 16)))
        with pytest.raises(ValueError, match="larger"):
            fuse(pan, np.zeros((128, 128, 3)))
    with pytest.raises(ValueError, match="histogram_match"):
        ihs_fuse(pan, np.zeros((16, 16, 3)), histogram_match="median")
    with pytest.raises(ValueError, match="levels"):
        laplacian_pyramid_fuse(pan, np.zeros((16, 16, 3)), levels=0)


def test_metrics_of_identical_images_are_perfect():
    rng = np.random.default_rng(5)
    img = rng.random((40, 48, 3))
    assert ssim(img, img) == pytest.approx(1.0)
    assert spectral_angle_mapper(img, img) == pytest.approx(0.0, abs=1e-6)
    assert ergas(img, img, 4) == 0.0
    assert q_index(img, img) == pytest.approx(1.0)
    assert correlation_coefficient(img, img) == pytest.approx(1.0)
    assert psnr(img, img) == float("inf")
    # SAM ignores brightness, ERGAS does not.
    assert spectral_angle_mapper(img, 2 * img) == pytest.approx(0.0, abs=1e-6)
    assert ergas(img, 2 * img, 4) > 10
    assert q_index(img, 2 * img) < 1.0
    m = fusion_metrics(np.repeat(np.repeat(img, 4, 0), 4, 1), img,
                       np.repeat(np.repeat(img.mean(2), 4, 0), 4, 1))
    assert m["ratio"] == 4 and m["ergas"] == pytest.approx(0.0, abs=1e-9)
    assert m["sam_deg"] == pytest.approx(0.0, abs=1e-6) and m["q"] == pytest.approx(1.0)
    assert m["spatial_cc"] == pytest.approx(1.0)


def test_metrics_refuse_mismatched_input():
    a = np.zeros((8, 8, 3))
    with pytest.raises(ValueError, match="shape"):
        ssim(a, np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match="ratio"):
        ergas(a, a, 0)
    with pytest.raises(ValueError, match="band"):
        fusion_metrics(np.zeros((16, 16, 3)), np.zeros((8, 8, 4)), np.zeros((16, 16)))
    with pytest.raises(ValueError, match="pan"):
        fusion_metrics(np.zeros((16, 16, 3)), np.zeros((8, 8, 3)), np.zeros((16, 15)))
