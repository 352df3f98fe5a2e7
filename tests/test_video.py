"""The video family on CPU, for real: tiny_wan through qco.runner.run with quantization, offload and a
regional compile; what a video run writes; the frames check; and that every full-size *_random recipe
is the published architecture, counted on the meta device (no memory, no download)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

import qco.execute
from qco.errors import QcoError
from qco.models.build import build_component, pipeline_class
from qco.runner import run
from qco.validate import check_values
from tests.conftest import CONF
from tests.helpers import assert_quantized, assert_real_image, attach_offload_probe


@pytest.fixture
def composed(monkeypatch):
    """The pipeline qco.runner.run composes, with an offload probe on it (the run itself is unchanged)."""
    seen = {}
    compose = qco.execute.compose_pipeline

    def composing(plan):
        pipe, seconds, store, steps = compose(plan)
        seen.update(pipe=pipe, plan=plan, calls=attach_offload_probe(pipe, plan.place.method or "none"))
        return pipe, seconds, store, steps

    monkeypatch.setattr(qco.execute, "compose_pipeline", composing)
    return seen


def gif_frames(path):
    with Image.open(path) as gif:
        # looping, at Wan's 16 fps as near as GIF's hundredths of a second come (60 ms a frame)
        assert gif.info.get("loop") == 0 and abs(gif.info["duration"] - 1000 / 16) < 10
        return [np.asarray(frame.convert("RGB"), dtype=np.float32) for frame in ImageSequence.Iterator(gif)]


@pytest.mark.parametrize("quant,offload,compile_", [
    ("none", "none", "none"),  # bf16
    ("nf4", "none", "none"),
    ("nf4", "model", "none"),
    ("nf4", "group_leaf", "none"),
    ("none", "group_block", "none"),
    ("nf4", "group_mixed", "none"),  # UMT5 and the VAE by layers, the transformer by blocks; the 4-bit state hook
    ("none", "none", "regional"),  # WanTransformer3DModel lists _repeated_blocks; about 15 s cold
])
@pytest.mark.slow
def test_tiny_wan_run_writes_a_real_video(quant, offload, compile_, make_cfg, composed, tmp_path):
    overrides = ["model=tiny_wan", f"quant={quant}", f"offload={offload}", f"compile={compile_}"]
    cfg = make_cfg(*overrides, "run.repeats=1", "run.device=cpu")
    record = run(cfg, tmp_path, overrides)

    assert record.status == "ok"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["images"] == ["image_0.png"] and saved["videos"] == ["video_0.gif"]
    assert saved["config"]["run"]["frames"] == 5
    pipe, plan = composed["pipe"], composed["plan"]
    assert type(pipe).__name__ == "WanPipeline"
    if quant != "none":
        assert plan.load.quant_components == ["transformer", "text_encoder"]
        assert_quantized(pipe, quant, plan.load.quant_components)
    if composed["calls"] is not None:
        assert len(composed["calls"]) >= cfg.run.steps  # the offload hook fired at every step at least
    if compile_ == "regional":
        assert all(getattr(block, "_compiled_call_impl", None) is not None for block in pipe.transformer.blocks)

    frames = gif_frames(tmp_path / "video_0.gif")
    assert len(frames) == cfg.run.frames
    assert all(frame.shape == (64, 64, 3) and frame.std() > 0 for frame in frames)  # no blank frame
    assert all(np.abs(a - b).mean() > 1 for a, b in zip(frames, frames[1:]))  # the frames differ
    image = Image.open(tmp_path / "image_0.png")
    assert_real_image(image)
    # the image is the video's first frame (the GIF holds it in a 256-colour palette)
    assert np.abs(np.asarray(image, dtype=np.float32) - frames[0]).mean() < 16


@pytest.mark.parametrize("overrides,line", [
    (["model=tiny_wan", "run.frames=6"],
     "run.frames=6: tiny_wan takes 1 + a multiple of 4 frames (1, 5, 9, ...); fix: run.frames=5 or 9"),
    (["model=tiny_wan", "run.frames=0"], "run.frames=0: tiny_wan takes 1 + a multiple of 4 frames"),
    (["model=tiny_wan", "run.frames=null"],
     "run.frames=null: tiny_wan makes videos and needs a frame count; fix: run.frames=5"),
    (["run.frames=5"], "run.frames=5: tiny_flux makes images, not videos; fix: leave run.frames out"),
])
def test_frames_are_checked_against_the_model(overrides, line, make_cfg):
    problems = check_values(make_cfg(*overrides))
    assert len(problems) == 1 and problems[0].startswith(line)


def test_frames_follow_the_model(make_cfg):
    assert make_cfg("model=wan21_t2v_14b").run.frames == 81
    assert make_cfg("model=tiny_wan", "run.frames=9").run.frames == 9
    assert make_cfg().run.frames is None and make_cfg("model=tiny_sd3").run.frames is None


def test_refused_run_of_a_bad_frame_count_loads_nothing(make_cfg, tmp_path):
    with pytest.raises(QcoError, match="run.frames=8"):
        run(make_cfg("model=tiny_wan", "run.frames=8", "run.device=cpu"), tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "refused"


# Elements each published checkpoint holds (parameters, tied ones once, and persistent buffers such as
# SD3's position table), as its safetensors headers count them:
PUBLISHED = {
    "flux_dev_random": {
        "transformer": 11_901_408_320,  # FLUX.1-dev transformer ("11.9B params")
        "text_encoder": 123_060_480,  # CLIP ViT-L/14 text model
        "text_encoder_2": 4_762_310_656,  # T5 v1.1 XXL encoder
        "vae": 83_819_683,  # the 16-channel VAE of FLUX.1 and SD3
    },
    "wan21_t2v_14b_random": {
        "transformer": 14_288_491_584,  # Wan 2.1 T2V 14B (each Wan 2.2 A14B expert is the same)
        "text_encoder": 5_680_910_336,  # UMT5-XXL encoder
        "vae": 126_892_531,  # Wan 2.1 VAE
    },
    "sd35_medium_random": {
        "transformer": 2_469_663_936,  # SD3.5 Medium MMDiT-X, its 384x384 position table included
        "text_encoder": 123_650_304,  # CLIP-L text model with projection
        "text_encoder_2": 694_659_840,  # OpenCLIP bigG text model with projection
        "text_encoder_3": 4_762_310_656,  # T5 v1.1 XXL encoder
        "vae": 83_819_683,
    },
}


def stored_elements(module) -> int:
    unique = {id(t): t for t in module.state_dict(keep_vars=True).values()}  # tied weights once
    return sum(t.numel() for t in unique.values())


@pytest.mark.parametrize("path", sorted(CONF.glob("model/*_random.yaml")), ids=lambda p: p.stem)
@pytest.mark.slow
def test_full_size_recipe_is_the_published_architecture(path, make_cfg):
    model = make_cfg(f"model={path.stem}").model
    assert path.stem in PUBLISHED, f"{path.stem}: add its published parameter counts to PUBLISHED"
    dtype = getattr(torch, model.build.dtype)
    components = {name: build_component(name, spec, dtype, "meta") for name, spec in model.build.components.items()
                  if name in PUBLISHED[path.stem] or "tokenizer" in name or name == "scheduler"}
    counts = {name: stored_elements(components[name]) for name in PUBLISHED[path.stem]}
    for name, published in PUBLISHED[path.stem].items():
        assert abs(counts[name] - published) <= 0.01 * published, (name, counts[name], published)
    pipe = pipeline_class(model.pipeline)(**components)  # the recipe's components fit the pipeline's slots
    assert {name for name, value in pipe.components.items() if value is not None} == set(components)
