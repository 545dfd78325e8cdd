"""The command line's overrides as xbench reads them before Hydra runs: one parser for the preflight and ``--help``.

Hydra parses the same line again when it runs the job; here the line is read
once to check every job of a run or sweep first (:func:`xbench.apps.run.preflight`):
which arguments are flags, whether it is a sweep, each override's values,
and the group options, read from ``conf/``. Errors are one line naming the
override (:class:`ConfigError`); Hydra's own span several.
"""

from __future__ import annotations

from xbench.core.errors import ConfigError

#: Config groups whose options are files under ``xbench/conf/<group>/``.
GROUPS = ("data", "model", "train", "explainer", "perturbation", "setup", "tracking", "experiment")
#: Hydra flags after which there is no job to check (help, printing the config, completion).
NO_JOB_FLAGS = {"--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc", "--version",
                "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
#: The flags that make a run a sweep.
MULTIRUN_FLAGS = ("-m", "--multirun")


def group_options(group: str) -> list[str]:
    """The options of a config group: ``model`` -> ["densenet121", ..., "vgg19"]."""
    from importlib.resources import files

    folder = files("xbench.conf") / group
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def key_of(arg: str) -> str:
    """The key an argument sets (``"+experiment=smoke"`` -> ``"experiment"``, ``"--cfg=job"`` -> ``"--cfg"``); a flag is its own key."""
    key = arg.partition("=")[0]
    return key if key.startswith("-") else key.lstrip("+~")


def has_job(args: list[str]) -> bool:
    """False when a flag asks Hydra for something other than a job (help, the config, completion)."""
    return not any(key_of(a) in NO_JOB_FLAGS for a in args)


def is_multirun(args: list[str]) -> bool:
    return any(a in MULTIRUN_FLAGS for a in args)


def job_choices(args: list[str]) -> list[list[str]]:
    """Per override of the command line, the overrides of each job it stands for (a sweep's values); group options checked against conf/.

    ``["-m", "model=vgg16,densenet201", "seed=1"]`` -> ``[["model=vgg16", "model=densenet201"], ["seed=1"]]``;
    Hydra's own settings (``hydra.*``) are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    multirun = is_multirun(args)
    parser = OverridesParser.create()
    parsed = []
    for line in (a for a in args if not a.startswith("-")):
        try:
            parsed += parser.parse_overrides([line])
        except HydraException:
            key, _, value = line.partition("=")
            hint = (f"; quote a value with spaces or non-ASCII characters: \"{key}='{value}'\""
                    if value and (not value.isascii() or " " in value) else "; see https://hydra.cc/docs/advanced/override_grammar/basic")
            raise ConfigError(f"cannot parse the override {line!r}{hint}") from None
    choices = []
    for o in parsed:
        key = o.key_or_group
        if key.split("/")[0].split(".")[0] == "hydra":
            continue  # Hydra's own settings (launcher, run dir) are Hydra's to check
        sweep = o.is_sweep_override()
        if sweep and not multirun:
            raise ConfigError(f"{o.input_line}: a sweep needs -m (xbench -m {o.input_line})")
        values = list(o.sweep_string_iterator()) if sweep else []
        if key in GROUPS and not o.is_delete():
            options = group_options(key)
            for v in values or [o.get_value_element_as_str()]:
                if v not in options:
                    raise ConfigError(f"{o.get_key_element()}={v}: no such {key}; choose one of: {', '.join(options)}")
        choices.append([f"{o.get_key_element()}={v}" for v in values] if sweep else [o.input_line])
    return choices


def compose_error(exc: BaseException, combo) -> ConfigError:
    """Hydra's multi-line composition error for the job of overrides ``combo``, as one line naming the override."""
    chain, e = [], exc
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    msg = " ".join(" ".join(chain).split())
    bad = next((c for c in combo if key_of(c) in msg), None)
    if bad and key_of(bad) == "score.metric_params" and not bad.startswith("+"):
        # a dictionary node of the schema: Hydra merges into it, and its struct flag refuses the new metric names
        return ConfigError(f"{bad}: write this dictionary setting with a leading +, as '+{bad}'")
    if "not in" in msg and bad:
        return ConfigError(f"{bad}: no such key in the config; check the spelling ('xbench --cfg job' prints every key)")
    detail = next((line for m in chain[1:] for line in m.splitlines()[:1] if "$VALUE" not in line), "")
    return ConfigError(f"{bad + ': ' if bad else ''}{str(exc).splitlines()[0]}{' (' + detail + ')' if detail else ''}")
