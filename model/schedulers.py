"""The sampler a generation runs with (``GenerationConfig.scheduler``).

RAGME §4 samples with DDIM; a base folder may declare another scheduler (PNDM in many
ModelScope exports). ``use_scheduler`` puts the requested one on the pipeline, built from the
*base folder's* scheduler config (betas, prediction type, offsets), and returns its class name
so a job can record the sampler actually used. The folder's own scheduler is remembered on the
pipeline, so a reused pipeline can always go back to it with ``"base"``.
"""

from __future__ import annotations

DEFAULT_SCHEDULER = "ddim"
ALIASES = {"ddim": "DDIMScheduler"}
EXAMPLES = (
    "ddim",
    "base",
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "PNDMScheduler",
)
_STATE = "_ragvid_schedulers"  # (the scheduler we installed, the base folder's own)


def scheduler_class(name: str) -> type | None:
    """The diffusers scheduler class for ``name`` (None for ``"base"``); ValueError if unknown."""
    import diffusers
    from diffusers import SchedulerMixin

    key = str(name).strip()
    if key.lower() == "base":
        return None
    key = ALIASES.get(key.lower(), key)
    try:
        cls = getattr(diffusers, key, None)
    except Exception:  # noqa: BLE001 - a lazily imported class whose backend is missing
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ValueError(
            f"unknown scheduler {name!r}: use 'ddim' (the paper's sampler), 'base' (the base "
            f"folder's own) or a diffusers scheduler class name — e.g. {', '.join(EXAMPLES)}"
        )
    return cls


def base_scheduler(pipe):
    """The scheduler the pipeline came with (before any ``use_scheduler``)."""
    installed, base = getattr(pipe, _STATE, (None, None))
    return base if installed is not None and pipe.scheduler is installed else pipe.scheduler


def use_scheduler(pipe, name: str = DEFAULT_SCHEDULER) -> str:
    """Make ``pipe`` sample with ``name`` ('ddim', 'base' or a diffusers scheduler class name,
    built with ``.from_config`` of the base folder's scheduler config); returns the class name
    of the scheduler now on the pipeline."""
    cls = scheduler_class(name)
    base = base_scheduler(pipe)
    if cls is None or type(base) is cls:
        chosen = base
    else:
        chosen = cls.from_config(base.config)
    pipe.scheduler = chosen
    setattr(pipe, _STATE, (chosen, base))
    return type(chosen).__name__
