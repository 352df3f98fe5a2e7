"""A quiet console: the libraries' own warnings and loading bars are off unless run.library_logs=true, so a
run prints qco's lines, its progress bar over the denoising steps and its table. Errors still show."""

import logging
import os
import warnings

LIBRARIES = ("torch", "torchao", "diffusers", "transformers", "bitsandbytes", "accelerate", "huggingface_hub",
             "safetensors", "triton")


def quiet_libraries(show: bool) -> None:
    """Called before torch and the libraries load (their import-time warnings included), in each job's
    process. `show`: run.library_logs."""
    if show:
        return
    for variable, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                            ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
        os.environ.setdefault(variable, value)
    pattern = "|".join(LIBRARIES)
    warnings.filterwarnings("ignore", module=rf"({pattern})(\.|$)")
    import torch  # noqa: F401 - torch sets up its loggers at import; the levels below come after

    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()  # "Loading pipeline components..."
    transformers.utils.logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
