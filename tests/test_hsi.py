"""The hsi family: clean cubes from the real spectral library, the 3D autoencoder and latent
denoiser at any band count, the pipeline, the three training stages, and `earthsynth denoise`
over every cube format with its errors."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from diffusers import DDIMScheduler

from earthsynth.cli import main
from earthsynth.config import load_config
from earthsynth.data.geotiff import Raster, read_geotiff, write_geotiff
from earthsynth.data.hsi import Cube, read_cube, write_envi
from earthsynth.data.hsi_scenes import (
    OTHER_GROUPS,
    VEGETATION_GROUPS,
    SyntheticCubes,
    abundances_from_rgb,
    resample_bands,
    spectral_library,
)
from earthsynth.errors import InputError
from earthsynth.generation.hsi import (
    HSIAutoencoder,
    HSIConditionEncoder,
    HSIDenoisePipeline,
    HSIRefiner,
    LatentDenoiser3D,
)
from earthsynth.generation.hsi.classical import pca_truncation
from earthsynth.generation.hsi.lowrank import (
    fit_start,
    robust_fits,
    robust_projection,
    spectral_noise_sigmas,
)
from earthsynth.generation.hsi.model import EigenimageDenoiser, OutlierDetector, pad_cube
from earthsynth.generation.hsi.pipeline import normalisation, to_dtype
from earthsynth.generation.hsi.train import eigenimage_loss, sparse_noise_mask
from earthsynth.training.loop import train
from tests_support import assert_input_error


def tiny_pipeline() -> HSIDenoisePipeline:
    torch.manual_seed(0)
    autoencoder = HSIAutoencoder(latent_channels=2, base_channels=4, hidden_channels=8, blocks=1, decoder_channels=4)
    condition_encoder = HSIConditionEncoder(out_channels=2, base_channels=4, hidden_channels=8, blocks=1)
    denoiser = LatentDenoiser3D(latent_channels=2, condition_channels=2, width=8, blocks_per_level=1)
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                              clip_sample=False)
    pipe = HSIDenoisePipeline(autoencoder, condition_encoder, denoiser, HSIRefiner(channels=4, blocks=1), scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hsi") / "model"
    tiny_pipeline().save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- clean cubes
def test_held_out_spectra_never_reach_training_cubes():
    library = spectral_library()
    assert library.spectra.shape == (7261, 180)
    for groups in (VEGETATION_GROUPS, OTHER_GROUPS):
        train, test = set(library.indices("train", groups)), set(library.indices("test", groups))
        assert train and test and not train & test
    assert 0.15 < library.held_out.mean() < 0.25
    # every held-out spectrum is really held out: a test cube is a mix of held-out spectra only
    cubes = SyntheticCubes("test", tile_size=16)
    assert {cubes.tiles.tiles[i].source.image_id for i in range(len(cubes))} == {"OSBS_029"}


def test_synthetic_cubes_are_fixed_by_index_and_follow_the_scene():
    cubes = SyntheticCubes("val", tile_size=32)
    first, again = cubes[3]["cube"], cubes[3]["cube"]
    assert first.shape == (180, 32, 32) and torch.equal(first, again)
    assert not torch.equal(first, cubes[4]["cube"])
    assert 0 <= float(first.min()) and float(first.max()) < 2
    # a mixture of a few materials: the cube is close to low rank, but not exactly rank 1
    singular = torch.linalg.svdvals(first.reshape(180, -1) - first.reshape(180, -1).mean(1, keepdim=True))
    assert singular[1] > 1e-3 * singular[0] and singular[12] < 1e-2 * singular[0]


def test_abundances_follow_colours():
    rgb = torch.zeros(3, 8, 8)
    rgb[1, :, :4] = 1.0  # green left half, black right half
    abundances, anchors = abundances_from_rgb(rgb, 2, torch.Generator().manual_seed(0))
    assert torch.allclose(abundances.sum(0), torch.ones(8, 8))
    green = int(anchors[:, 1].argmax())
    assert abundances[green, :, :4].min() > 0.99 and abundances[green, :, 4:].max() < 0.01


def test_resample_bands_keeps_the_range_ends_and_lines():
    ramp = torch.linspace(0, 1, 180)[None, :, None, None].expand(2, 180, 3, 3)
    out = resample_bands(ramp, 31)
    assert out.shape == (2, 31, 3, 3)
    assert torch.allclose(out[0, :, 0, 0], torch.linspace(0, 1, 31), atol=1e-6)


# ----------------------------------------------------------------------------- networks
@pytest.mark.parametrize("bands,size", [(31, 16), (103, 13), (2, 6)])
def test_autoencoder_and_denoiser_take_any_band_count_and_size(bands, size):
    pipe = tiny_pipeline()
    cube = torch.rand(2, bands, size, size)
    padded = pad_cube(cube)
    assert all(s % 4 == 0 for s in padded.shape[1:]) and torch.equal(padded[:, :bands, :size, :size], cube)
    latent = pipe.autoencoder.encode(cube)
    assert latent.shape == (2, 2, padded.shape[1] // 2, padded.shape[2] // 2, padded.shape[3] // 2)
    assert pipe.autoencoder.decode(latent, (bands, size, size)).shape == cube.shape
    condition = pipe.condition_encoder(cube)
    assert pipe.denoiser(latent, torch.tensor([5, 50]), condition).shape == latent.shape
    assert pipe.refiner(cube, cube * 0.5).shape == cube.shape


def low_rank_cube_with_sensor_noise(seed: int = 0, impulse_fraction: float = 0.05):
    """A rank-3 cube (24 bands, 24x24, spatially smooth abundances), the same with Gaussian
    noise whose std grows 20-fold across the bands plus impulses in a third of the bands, and
    the impulse mask."""
    generator = torch.Generator().manual_seed(seed)
    spectra = torch.rand(3, 24, generator=generator)
    abundances = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 28, 28, generator=generator), 5, stride=1)[0]
    cube = torch.einsum("kb,khw->bhw", spectra, abundances)
    sigmas = torch.linspace(0.005, 0.1, 24)[:, None, None]
    impulses = (torch.rand(cube.shape, generator=generator) < impulse_fraction) & (torch.arange(24) % 3 == 0)[:, None, None]
    noisy = cube + sigmas * torch.randn(cube.shape, generator=generator)
    noisy = torch.where(impulses, torch.ones_like(cube) * 2, noisy)
    return cube, noisy, impulses


def test_robust_projection_beats_pca_on_band_varying_noise_and_impulses():
    cube, noisy, impulses = low_rank_cube_with_sensor_noise()
    estimate, outliers = robust_projection(noisy[None], 3)
    plain = torch.from_numpy(pca_truncation(noisy.numpy(), 3))
    error = lambda x: float(((x - cube) ** 2).mean())  # noqa: E731
    assert error(estimate[0]) < error(plain) / 20
    assert error(estimate[0]) < error(noisy) / 20
    # the impulses are found, and little else is
    assert float(outliers[0][impulses].float().mean()) > 0.95
    assert float(outliers[0][~impulses].float().mean()) < 0.05


def test_whitening_helps_when_the_noise_varies_across_bands():
    cube, noisy, _ = low_rank_cube_with_sensor_noise(impulse_fraction=0.0)
    whitened, _ = robust_projection(noisy[None], 3)
    unwhitened, _ = robust_projection(noisy[None], 3, whiten=False)
    assert float(((whitened - cube) ** 2).mean()) < 0.7 * float(((unwhitened - cube) ** 2).mean())


def test_robust_projection_at_full_rank_and_bad_arguments():
    cube = torch.rand(1, 5, 6, 6)
    estimate, outliers = robust_projection(cube, 5)
    assert torch.equal(estimate, cube) and not outliers.any()
    with pytest.raises(ValueError, match="at least 1"):
        robust_projection(cube, 0)
    with pytest.raises(ValueError, match="3 bands"):
        spectral_noise_sigmas(torch.rand(1, 2, 6, 6))


def test_robust_fit_eigenimages_rebuild_the_estimate_and_project_the_clean_cube():
    cube, noisy, _ = low_rank_cube_with_sensor_noise()
    fit = robust_fits(noisy[None], [3])[0]
    estimate, outliers = robust_projection(noisy[None], 3)
    assert fit.basis.shape == (1, 24, 3) and fit.coefficients.shape == (1, 3, *noisy.shape[-2:])
    assert torch.equal(fit.estimate().to(noisy.dtype), estimate) and torch.equal(fit.outliers, outliers)
    # the clean rank-3 cube lies close to the fitted subspace: its eigen-images rebuild it
    # better than the noisy ones do (the error left is noise inside the subspace)
    error = lambda x: float(((x - cube) ** 2).mean())  # noqa: E731
    assert error(fit.estimate(fit.project(cube[None]))) < error(estimate) / 5
    assert robust_fits(noisy[None], [24, 2])[0] is None


def test_spectral_noise_sigmas_finds_each_bands_noise():
    cube, noisy, _ = low_rank_cube_with_sensor_noise(impulse_fraction=0.0)
    estimated = spectral_noise_sigmas(noisy[None])[0].float()
    ratio = estimated / torch.linspace(0.005, 0.1, 24)
    # the other bands' noise leaks into a quiet band's regression, so quiet bands read high
    assert float(ratio.min()) > 0.8 and float(ratio.max()) < 2.5 and float(ratio[12:].max()) < 1.3
    assert float(estimated[-6:].mean()) > 3 * float(estimated[:6].mean())
    assert float(spectral_noise_sigmas(cube[None]).max()) < 1e-3  # a noiseless rank-3 cube


def test_refiner_starts_as_the_robust_estimate_and_checks_its_base_rank():
    _cube, noisy, _impulses = low_rank_cube_with_sensor_noise()
    refiner = HSIRefiner(channels=4, blocks=1, subspace_ranks=(2, 3), base_rank=3)
    expected, _ = robust_projection(noisy[None], 3)
    assert torch.allclose(refiner(noisy[None], torch.zeros_like(noisy[None])), expected)
    with pytest.raises(ValueError, match="base_rank"):
        HSIRefiner(subspace_ranks=(4, 8), base_rank=6)


def test_refiner_with_eigenimage_denoiser_starts_as_the_fit_at_its_rank():
    _cube, noisy, _impulses = low_rank_cube_with_sensor_noise()
    refiner = HSIRefiner(channels=4, blocks=1, subspace_ranks=(2, 3), base_rank=3, eigenimage_rank=5,
                         eigenimage_channels=8)
    expected, _ = robust_projection(noisy[None], 5)
    odd = noisy[None, :, :23, :21]  # odd sizes go through the denoiser's one downsampling
    output = refiner.refine(odd, torch.zeros_like(odd))
    assert output.eigenimages.shape == (1, 5, 23, 21)
    assert torch.allclose(output.cube, robust_projection(odd, 5)[0], atol=1e-6)
    assert torch.allclose(refiner(noisy[None], torch.zeros_like(noisy[None])), expected, atol=1e-6)
    # too few bands for a rank-5 fit: the base-rank estimate is the start
    few = noisy[None, :4]
    output = refiner.refine(few, torch.zeros_like(few))
    assert output.fit is None and torch.allclose(output.cube, robust_projection(few, 3)[0])


def test_eigenimage_denoiser_learns_from_the_eigenimage_loss():
    torch.manual_seed(0)
    denoiser = EigenimageDenoiser(channels=8)
    cube, noisy, _ = low_rank_cube_with_sensor_noise(impulse_fraction=0.0)
    fit = robust_fits(noisy[None], [3])[0]
    eigenimages, fraction = fit.coefficients.float(), fit.outliers.float().mean(1)
    optimiser = torch.optim.Adam(denoiser.parameters(), lr=3e-3)
    before = float(eigenimage_loss(fit, denoiser(eigenimages, fraction), cube[None]))
    for _ in range(40):
        loss = eigenimage_loss(fit, denoiser(eigenimages, fraction), cube[None])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss) < before - 0.5  # the log band error: 2 dB and more


def test_robust_fit_keeps_known_outliers_out_of_the_fit():
    cube, noisy, impulses = low_rank_cube_with_sensor_noise(impulse_fraction=0.3)
    error = lambda fit: float(((fit.estimate().float()[0] - cube) ** 2).mean())  # noqa: E731
    blind = robust_fits(noisy[None], [3], iterations=1)[0]
    told = robust_fits(noisy[None], [3], iterations=1, known_outliers=impulses[None])[0]
    assert bool(told.outliers[0][impulses].all())  # flagged in every iteration, whatever the residual
    assert error(told) < error(blind)
    # a start shared between fits of the same cube gives the same fits as computing it each time
    shared = robust_fits(noisy[None], [3], iterations=1, known_outliers=impulses[None], start=fit_start(noisy[None]))[0]
    assert torch.equal(shared.estimate(), told.estimate()) and torch.equal(shared.outliers, told.outliers)


def test_outlier_detector_learns_where_the_sparse_noise_is():
    torch.manual_seed(0)
    cube, noisy, impulses = low_rank_cube_with_sensor_noise(impulse_fraction=0.2)
    target = sparse_noise_mask(noisy[None], cube[None])
    assert float(target[0][impulses].float().mean()) > 0.95 and float(target[0][~impulses].float().mean()) < 0.05
    detector = OutlierDetector(channels=8, blocks=1)
    first = robust_fits(noisy[None], [3])[0].estimate().float()
    optimiser = torch.optim.Adam(detector.parameters(), lr=1e-2)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for _ in range(80):
        loss = bce(detector(noisy[None], first), target.float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    flagged = detector(noisy[None], first)[0] > 0
    assert float(flagged[impulses].float().mean()) > 0.9 and float(flagged[~impulses].float().mean()) < 0.05
    # in the refiner: logits for every value, none where there are too few bands to fit
    refiner = HSIRefiner(channels=4, blocks=1, subspace_ranks=(2, 3), base_rank=3, detector_channels=4)
    assert refiner.refine(noisy[None], torch.zeros_like(noisy[None])).outlier_logits.shape == (1, *noisy.shape)
    assert refiner.refine(noisy[None, :3], torch.zeros_like(noisy[None, :3])).outlier_logits is None


def test_normalisation_maps_to_unit_range_and_keeps_zero():
    cube = torch.rand(1, 8, 16, 16) * 4000
    offset, scale = normalisation(cube)
    assert float(offset) == 0 and 3900 < float(scale) < 4001
    shifted = cube - 1000
    offset, _ = normalisation(shifted)
    assert -1001 < float(offset) < -990


def test_to_dtype_rounds_and_clips_integers():
    out = to_dtype(np.array([-3.0, 1.6, 70000.0]), np.uint16)
    assert out.dtype == np.uint16 and out.tolist() == [0, 2, 65535]


# ----------------------------------------------------------------------------- pipeline
def test_pipeline_keeps_shape_and_dtype_and_is_reproducible():
    pipe = tiny_pipeline()
    cube = (np.random.default_rng(0).random((12, 20, 20)) * 1000).astype(np.uint16)
    out = pipe(cube, num_inference_steps=2, generator=torch.Generator().manual_seed(1)).cube
    again = pipe(cube, num_inference_steps=2, generator=torch.Generator().manual_seed(1)).cube
    assert out.shape == cube.shape and out.dtype == np.uint16 and np.array_equal(out, again)
    as_tensor = pipe(torch.from_numpy(cube.astype(np.float32)), 2, output_type="pt",
                     generator=torch.Generator().manual_seed(1)).cube
    assert as_tensor.dtype == torch.float32 and as_tensor.shape == cube.shape


def test_pipeline_tiles_blend_to_the_whole_cube():
    """Tiling is exact where tiles do not overlap the border differently: a cube smaller than the
    tile goes through in one piece, and a larger one is covered completely by blended tiles."""
    pipe = tiny_pipeline()
    cube = np.random.default_rng(1).random((6, 40, 36)).astype(np.float32)
    whole = pipe(cube, 1, tile=64, generator=torch.Generator().manual_seed(0)).cube
    tiled = pipe(cube, 1, tile=16, overlap=4, generator=torch.Generator().manual_seed(0)).cube
    assert tiled.shape == whole.shape and np.isfinite(tiled).all()
    assert np.abs(tiled - whole).mean() < np.abs(whole).mean()


@pytest.mark.parametrize("cube,kw,words", [
    (np.full((1, 8, 8), 0.5, np.float32), {}, "at least 2 bands"),
    (np.zeros((8, 8), np.float32), {}, "(bands, H, W)"),
    (np.full((4, 8, 8), np.nan, np.float32), {}, "NaN"),
    (np.zeros((4, 2, 8), np.float32), {}, "at least 4x4"),
    (np.zeros((4, 8, 8), np.float32), {"strength": 0.0}, "strength"),
    (np.zeros((4, 8, 8), np.float32), {"num_inference_steps": 0}, "num_inference_steps"),
])
def test_pipeline_rejects_bad_input(cube, kw, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        tiny_pipeline()(cube, **kw)


def test_pipeline_round_trips_through_save_pretrained(model_dir):
    loaded = HSIDenoisePipeline.from_pretrained(model_dir)
    cube = np.random.default_rng(2).random((5, 12, 12)).astype(np.float32)
    a = tiny_pipeline()(cube, 2, generator=torch.Generator().manual_seed(0)).cube
    b = loaded(cube, 2, generator=torch.Generator().manual_seed(0)).cube
    np.testing.assert_allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- three training stages
def test_three_training_stages_chain(tmp_path):
    common = {"data": {"tile_size": 16, "sources": ["deepforest"]},
              "train": {"max_steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1}}
    small = {"base_channels": 4, "hidden_channels": 8, "blocks": 1, "decoder_channels": 4, "latent_channels": 2,
             "condition_channels": 2, "denoiser_width": 8, "denoiser_blocks": 1, "train_bands": [9, 12]}
    stage1 = load_config(tree={"family": "hsi_autoencoder", "output_dir": str(tmp_path / "ae"), "model": small, **common})
    train(stage1, show_progress=False)
    exported = HSIAutoencoder.from_pretrained(tmp_path / "ae" / "final" / "autoencoder")
    assert exported.config.scaling_factor != 1.0  # set so latents have unit variance
    stage2 = load_config(tree={"family": "hsi", "output_dir": str(tmp_path / "s2"),
                               "model": {**small, "autoencoder": str(tmp_path / "ae" / "final")}, **common})
    train(stage2, show_progress=False)
    # the stage-3 config leaves the sizes at their defaults; the saved config names the loaded ones
    stage3 = load_config(tree={"family": "hsi", "output_dir": str(tmp_path / "s3"),
                               "model": {"train_bands": [9, 12], "init_from": str(tmp_path / "s2" / "final"),
                                         "noise_kinds": ["mixture"]}, **common})
    result = train(stage3, show_progress=False)
    recorded = load_config(Path(result["final_dir"]) / "train_config.yaml").model
    assert (recorded.latent_channels, recorded.denoiser_width, recorded.condition_channels) == (2, 8, 2)
    pipe = HSIDenoisePipeline.from_pretrained(result["final_dir"])
    # the autoencoder stays frozen through stages 2 and 3
    for name, tensor in pipe.autoencoder.state_dict().items():
        assert torch.equal(tensor, exported.state_dict()[name]), name
    assert pipe(np.random.default_rng(0).random((10, 16, 16)).astype(np.float32), 2).cube.shape == (10, 16, 16)
    # stage 3b: a detector added to the stage-2 refiner, trained alone; the latent model stays
    detect = load_config(tree={"family": "hsi", "output_dir": str(tmp_path / "s3b"),
                               "model": {**small, "init_from": str(tmp_path / "s2" / "final"), "detector_channels": 4,
                                         "refiner_only": True}, **common})
    grown = HSIDenoisePipeline.from_pretrained(train(detect, show_progress=False)["final_dir"])
    stage2 = HSIDenoisePipeline.from_pretrained(tmp_path / "s2" / "final")
    assert grown.refiner.detector is not None and grown.refiner.config.detector_channels == 4
    for name, tensor in stage2.denoiser.state_dict().items():
        assert torch.equal(tensor, grown.denoiser.state_dict()[name]), name
    assert not torch.equal(stage2.refiner.conv_out.weight, grown.refiner.conv_out.weight)


def test_stage_two_needs_the_autoencoder(tmp_path):
    config = load_config(tree={"family": "hsi", "output_dir": str(tmp_path), "model": {}})
    with pytest.raises(InputError, match="stage-1 export"):
        train(config, show_progress=False)
    config = load_config(tree={"family": "hsi", "output_dir": str(tmp_path),
                               "model": {"autoencoder": "x", "noise_kinds": ["fog"]}})
    with pytest.raises(InputError, match="fog"):
        train(config, show_progress=False)


# ----------------------------------------------------------------------------- earthsynth denoise
def noisy_cube(bands=7, size=12, dtype=np.float32):
    rng = np.random.default_rng(3)
    return (rng.random((bands, size, size)) * (1000 if dtype != np.float32 else 1)).astype(dtype)


def test_denoise_every_format(tmp_path, model_dir):
    data = noisy_cube(dtype=np.uint16)
    np.save(tmp_path / "in.npy", data)
    import scipy.io

    scipy.io.savemat(tmp_path / "in.mat", {"indian_pines": data.transpose(1, 2, 0)})
    write_envi(tmp_path / "in.hdr", Cube(data, wavelengths=np.linspace(0.4, 2.4, 7)))
    write_geotiff(tmp_path / "in.tif", Raster(data, crs="EPSG:32617", transform=(1.0, 0, 400000, 0, -1.0, 3280000),
                                             tags={"SENSOR": "test"}, band_names=[f"b{i}" for i in range(7)]))
    for source, target in [("in.npy", "out.npy"), ("in.mat", "out.mat"), ("in.hdr", "out.hdr"), ("in.tif", "out.tif"),
                           ("in.npy", "as.tif")]:
        assert main(["denoise", str(tmp_path / source), "--out", str(tmp_path / target), "--model", str(model_dir),
                     "--steps", "1"]) == 0, source
        cube = read_cube(tmp_path / target)
        assert cube.data.shape == data.shape, target
    assert read_cube(tmp_path / "out.npy").metadata["dtype"] == np.dtype(np.uint16).str
    assert read_cube(tmp_path / "out.mat").metadata["key"] == "indian_pines"
    np.testing.assert_allclose(read_cube(tmp_path / "out.hdr").wavelengths, np.linspace(0.4, 2.4, 7))
    raster = read_geotiff(tmp_path / "out.tif")
    assert raster.crs == "EPSG:32617" and raster.transform == (1.0, 0, 400000, 0, -1.0, 3280000)
    assert raster.data.dtype == np.uint16 and raster.tags["SENSOR"] == "test" and raster.band_names[0] == "b0"
    with rasterio.open(tmp_path / "as.tif") as src:
        assert src.crs is None and src.count == 7


def test_bundled_model_denoises_every_format_without_model_argument(tmp_path):
    """The default checkpoint removes most of the mixture noise from a validation cube at a
    band count it never trained on, in integer units, read and written in every format."""
    import scipy.io

    from earthsynth.data.hsi_noise import add_noise
    from earthsynth.image_metrics import band_psnr

    clean = resample_bands(SyntheticCubes("val", tile_size=32)[5]["cube"], 48)
    noisy, _ = add_noise(clean, "mixture", generator=torch.Generator().manual_seed(0))
    clean, noisy = (clean.numpy() * 10000).round(), (noisy.numpy().clip(0) * 10000).round().astype(np.uint16)
    np.save(tmp_path / "in.npy", noisy)
    scipy.io.savemat(tmp_path / "in.mat", {"cube": noisy.transpose(1, 2, 0)})
    write_envi(tmp_path / "in.hdr", Cube(noisy))
    write_geotiff(tmp_path / "in.tif", Raster(noisy, crs="EPSG:32617", transform=(1.0, 0, 400000, 0, -1.0, 3280000)))
    noisy_psnr = band_psnr(noisy, clean)
    for source, target in [("in.npy", "out.npy"), ("in.mat", "out.mat"), ("in.hdr", "out.hdr"), ("in.tif", "out.tif")]:
        assert main(["denoise", str(tmp_path / source), "--out", str(tmp_path / target), "--steps", "2"]) == 0, source
        denoised = read_cube(tmp_path / target).data
        assert denoised.shape == noisy.shape
        assert band_psnr(denoised, clean) > noisy_psnr + 5, (target, band_psnr(denoised, clean), noisy_psnr)


def test_denoise_bad_inputs_one_line_and_nothing_written(tmp_path, model_dir, capsys):
    bad = {}
    np.save(tmp_path / "one_band.npy", noisy_cube(bands=1))
    bad["one_band.npy"] = "1 band"
    nan = noisy_cube()
    nan[2, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    bad["nan.npy"] = "NaN"
    np.save(tmp_path / "flat.npy", np.zeros((12, 12), np.float32))
    bad["flat.npy"] = "3-D"
    write_envi(tmp_path / "cut.hdr", Cube(noisy_cube()))
    raw = (tmp_path / "cut.img").read_bytes()
    (tmp_path / "cut.img").write_bytes(raw[: len(raw) // 2])
    bad["cut.hdr"] = "truncated"
    write_envi(tmp_path / "mismatch.hdr", Cube(noisy_cube()))
    header = (tmp_path / "mismatch.hdr").read_text().replace("bands = 7", "bands = 9")
    (tmp_path / "mismatch.hdr").write_text(header)
    bad["mismatch.hdr"] = "the header says"
    (tmp_path / "junk.mat").write_bytes(b"not a matlab file at all")
    bad["junk.mat"] = "MATLAB"
    for name, words in bad.items():
        out = tmp_path / f"out_{Path(name).stem}.npy"
        assert main(["denoise", str(tmp_path / name), "--out", str(out), "--model", str(model_dir)]) == 1, name
        err = capsys.readouterr().err.strip()
        # the truncated ENVI cube is named by its data file (cut.img), the others by their own name
        assert "\n" not in err and Path(name).stem in err and words in err, (name, err)
        assert not out.exists()
    np.save(tmp_path / "ok.npy", noisy_cube())
    assert main(["denoise", str(tmp_path / "ok.npy"), "--out", str(tmp_path / "x.png"), "--model", str(model_dir)]) == 1
    assert "unsupported output format" in capsys.readouterr().err


def test_denoise_file_errors_name_the_file(tmp_path, model_dir):
    from earthsynth.jobs.denoise import denoise_file

    np.save(tmp_path / "a.npy", noisy_cube())
    with pytest.raises(InputError) as err:
        denoise_file(tmp_path / "a.npy", tmp_path / "a.npy", model_dir=model_dir)
    assert_input_error(err, tmp_path / "a.npy", "is the input file")
    with pytest.raises(InputError) as err:
        denoise_file(tmp_path / "a.npy", tmp_path / "b.npy", model_dir=model_dir, strength=2.0)
    assert_input_error(err, tmp_path / "a.npy", "strength")


def test_denoise_robust_pca_method_needs_no_model_and_keeps_the_format(tmp_path, capsys):
    """--method robust-pca: the classical fit the refiner starts from, tiled, in a GeoTIFF that
    stays georeferenced and integer; far closer to the clean cube than the noisy one; its own
    errors name the file."""
    from earthsynth.data.hsi_noise import add_noise
    from earthsynth.image_metrics import band_psnr

    clean = resample_bands(SyntheticCubes("val", tile_size=32)[5]["cube"], 40)
    noisy, _ = add_noise(clean, "mixture", generator=torch.Generator().manual_seed(0))
    clean, noisy = (clean.numpy() * 10000).round(), (noisy.numpy().clip(0) * 10000).round().astype(np.uint16)
    write_geotiff(tmp_path / "in.tif", Raster(noisy, crs="EPSG:32617", transform=(1.0, 0, 400000, 0, -1.0, 3280000)))
    args = ["denoise", str(tmp_path / "in.tif"), "--out", str(tmp_path / "out.tif"), "--method", "robust-pca",
            "--rank", "4", "--tile", "16"]
    assert main(args) == 0
    with rasterio.open(tmp_path / "out.tif") as dst:
        assert dst.crs.to_epsg() == 32617 and dst.dtypes[0] == "uint16" and dst.count == 40
        denoised = dst.read()
    assert band_psnr(denoised, clean) > band_psnr(noisy, clean) + 8

    for extra, words in [(["--model", "x"], "--method model only"), (["--rank", "0"], "--rank")]:
        assert main(args[:-2] + extra) == 1
        err = capsys.readouterr().err.strip()
        assert "in.tif" in err and words in err and "\n" not in err, err
    np.save(tmp_path / "two.npy", noisy_cube(bands=2))
    assert main(["denoise", str(tmp_path / "two.npy"), "--out", str(tmp_path / "two_out.npy"), "--method", "robust-pca"]) == 1
    assert "at least 3" in capsys.readouterr().err
    assert not (tmp_path / "two_out.npy").exists()
