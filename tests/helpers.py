"""Build a pipeline from a composed config the way a run does, for tests that inspect it."""

import numpy as np

from qco.compose import compose_pipeline
from qco.measure import measure_calls
from qco.models.source import resolve_source
from qco.run import check_and_plan


def build(cfg):
    plan = check_and_plan(cfg)
    plan.load.source = resolve_source(cfg.model, cfg.paths.models)
    pipe, _ = compose_pipeline(plan)
    return plan, pipe


def generate(pipe, cfg, plan):
    run = cfg.run
    kwargs = {"prompt": run.prompt, "num_inference_steps": run.steps, "height": run.height, "width": run.width,
              "guidance_scale": run.guidance}
    measured = measure_calls(pipe, kwargs, run.seed, plan.target.device, warmup=0, repeats=1, steps=run.steps)
    return measured.images


def assert_real_image(image, size=(64, 64)):
    pixels = np.asarray(image, dtype=np.float32)
    assert image.size == size
    assert np.isfinite(pixels).all()
    assert pixels.std() > 0  # not a blank image
