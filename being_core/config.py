"""Run configs: YAML that picks an implementation per stage, validated whole before anything runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, UnknownImplementationError, UsageError
from .registry import Implementation, Registry, RunnerImplementation
from .runners import RunnerOptions
from .stage import STAGE_ORDER, StageConfig, StageKind

CONFIG_SCHEMA_VERSION = 1
DEFAULT_CONFIG = "default"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestConfig(_Strict):
    fps: float = Field(25.0, ge=1, le=120, description="Frame rate of the dataset; every public trainer expects 25.")
    size: int | None = Field(512, ge=32, le=4096, description="Square output size in pixels; null keeps the source size.")
    crop: Literal["face", "center", "none"] = Field(
        "face", description="'face' keeps one fixed square around the subject's head and shoulders, found by the "
        "face tracker's 'locate' action on frames sampled over the whole clip; 'center' keeps the largest centred "
        "square; 'none' squashes the whole frame.")
    face_scale: float = Field(2.2, ge=1.2, le=8, description="With crop 'face': the square's side in face "
                              "heights (plus the face's travel over the clip); as large as the frame allows.")
    crop_samples: int = Field(9, ge=1, le=64, description="With crop 'face': frames sampled to find the face.")
    audio: Literal["required", "optional"] = Field(
        "required", description="'optional' prepares a clip without an audio stream (no audio stage runs)."
    )
    min_frames: int = Field(50, ge=1, le=100_000, description="Shortest clip, in frames at `fps`, worth training on.")
    jpeg_quality: int = Field(2, ge=1, le=31, description="ffmpeg -q:v for ori_imgs (1 best, 31 worst).")
    truncated: Literal["refuse", "accept"] = Field(
        "refuse", description="A video whose frames end well before its container's duration (a cut-off "
        "download): 'refuse' it, or 'accept' what decodes with a warning.")
    audio_shift_ms: float = Field(0.0, ge=-2000, le=2000, description="Move the sound against the picture by this "
                                  "much: positive plays it later (silence before it), negative earlier (its start cut). "
                                  "For a clip whose sound is out of sync; `being train` warns when it looks so.")
    val_split: int = Field(11, ge=2, le=1000, description="The last 1/val_split of the frames is held out (the val "
                           "split every stage reads); the reference datasets hold out 1/11.")

    def decoding(self) -> dict[str, Any]:
        """The settings that change the decoded frames and audio (the split does not)."""
        settings = self.model_dump(mode="json", exclude={"val_split", "truncated"})
        if not self.audio_shift_ms:  # unshifted: the key of runs prepared before the setting existed
            del settings["audio_shift_ms"]
        return settings


class StageSelection(_Strict):
    impl: str = Field(description="Implementation name, as listed by `being plugins`.")
    config: dict[str, Any] = Field(default_factory=dict, description="The implementation's own settings.")
    runner: str = Field("inprocess", description="Where the stage runs: a runner name (`being plugins`).")
    runner_options: dict[str, Any] = Field(default_factory=dict, description="The runner's own options, e.g. "
                                           "timeout_s; each runner validates its own.")


class RunConfig(_Strict):
    schema_version: Literal[1] = Field(1, description="Config format version.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="How a video becomes frames and audio.")
    stages: dict[StageKind, StageSelection | None] = Field(
        default_factory=dict, description="Implementation per stage kind; null or absent skips the stage."
    )


@dataclass(frozen=True)
class ResolvedStage:
    """One selected stage: its implementation, its parsed config, and its runner with the runner's options."""

    kind: StageKind
    selection: StageSelection
    impl: Implementation
    config: StageConfig
    runner: RunnerImplementation
    runner_options: RunnerOptions

    def config_problems(self) -> list[str]:
        """What its implementation finds wrong with its config before anything runs (``Stage.config_problems``)."""
        return [f"stages.{self.kind}.config: {p}" for p in self.impl.cls.config_problems(self.config)]


@dataclass(frozen=True)
class ResolvedConfig:
    """A config that passed every check, with each stage's config parsed by its implementation."""

    raw: RunConfig
    stages: dict[StageKind, ResolvedStage]
    source: str

    def to_dict(self) -> dict[str, Any]:
        """The config with every default filled in, as saved in the run folder."""
        data = self.raw.model_dump(mode="json")
        data["stages"] = {
            str(k): {**data["stages"][str(k)], "config": rs.config.model_dump(mode="json"),
                     "runner_options": rs.runner_options.model_dump(mode="json", exclude_none=True)}
            if (rs := self.stages.get(k)) else None
            for k in STAGE_ORDER if str(k) in data["stages"]
        }
        return data


def shipped_configs() -> dict[str, Path]:
    """The configs that come with Being (package data), by name: ``default``, ``cpu-small``, ..."""
    folder = resources.files("being_core.configs")
    found = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml"):
            found[entry.name[: -len(".yaml")]] = Path(str(entry))
    return dict(sorted(found.items()))


def find_config(name_or_path: str | Path | None) -> Path:
    """A config file: an existing path, else a shipped config by name (``cpu-small`` or ``cpu-small.yaml``);
    None means the shipped ``default``. Anything else is a UsageError listing the shipped names."""
    shipped = shipped_configs()
    if name_or_path is None:
        if DEFAULT_CONFIG not in shipped:
            raise UsageError("the shipped default config is missing from this installation of being-core; "
                             "reinstall it or pass -c CONFIG")
        return shipped[DEFAULT_CONFIG]
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if str(path) in (path.name, name) and name in shipped:
        return shipped[name]
    if path.exists():
        raise UsageError(f"config {path} is not a file")
    raise UsageError(f"config file {path} does not exist; shipped configs: {', '.join(shipped) or 'none'}")


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}".replace("\n", " ")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"top level must be a mapping, got {type(data).__name__}"])
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (``null``, ``3``, ``[1, 2]``)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got '{item}'")
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    return data


def _loc(prefix: str, err: Mapping[str, Any]) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in err["loc"]]
    return ".".join(parts)


def _describe(prefix: str, err: Mapping[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return f"{_loc(prefix, err)}: unknown key"
    return f"{_loc(prefix, err)}: {err['msg']}"


def resolve(data: dict[str, Any], registry: Registry, source: str = "config") -> ResolvedConfig:
    """Validate a whole config against the installed plugins; every problem is reported in one ConfigError."""
    problems: list[str] = []
    given = data.get("stages")
    stages_raw: dict[str, Any] = given if isinstance(given, dict) else {}
    try:
        raw = RunConfig.model_validate(data)
    except ValidationError as exc:
        problems += [_describe("", e) for e in exc.errors()]
        raw = None
    resolved: dict[StageKind, ResolvedStage] = {}
    for kind in STAGE_ORDER:
        sel_raw = stages_raw.get(str(kind))
        if not isinstance(sel_raw, dict) or not isinstance(sel_raw.get("impl"), str):
            continue  # shape problems were reported above
        try:
            impl = registry.implementation(kind, sel_raw["impl"])
        except UnknownImplementationError as exc:
            problems.append(f"stages.{kind}.impl: {exc}")
            continue
        try:
            cfg = impl.cls.Config.model_validate(sel_raw.get("config") or {})
        except ValidationError as exc:
            problems += [_describe(f"stages.{kind}.config", e) for e in exc.errors()]
            cfg = None
        runner_name = sel_raw.get("runner", "inprocess")
        runner = options = None
        if isinstance(runner_name, str):
            try:
                runner = registry.runner(runner_name)
            except UnknownImplementationError as exc:
                problems.append(f"stages.{kind}.runner: {exc}")
        if runner is not None and isinstance(sel_raw.get("runner_options") or {}, dict):
            try:
                options = runner.cls.Options.model_validate(sel_raw.get("runner_options") or {})
            except ValidationError as exc:
                accepted = ", ".join(runner.cls.Options.model_fields)
                problems += [f"{_loc(f'stages.{kind}.runner_options', e)}: not an option of runner '{runner_name}' "
                             f"(its options: {accepted})" if e["type"] == "extra_forbidden"
                             else _describe(f"stages.{kind}.runner_options", e) for e in exc.errors()]
        selection = raw.stages.get(kind) if raw is not None else None
        if selection is not None and cfg is not None and runner is not None and options is not None:
            resolved[kind] = ResolvedStage(kind, selection, impl, cfg, runner, options)
    if problems or raw is None:
        raise ConfigError(source, problems)
    return ResolvedConfig(raw, resolved, source)


def crop_problems(config: ResolvedConfig) -> list[str]:
    """What stops ingest from cropping as configured: ``ingest.crop: face`` is a promise the face tracker keeps,
    so one must be selected and able to locate faces. Checked before ``being prepare`` writes anything."""
    if config.raw.ingest.crop != "face":
        return []
    if config.raw.stages.get(StageKind.FACE_TRACKER) is None:
        return ["ingest.crop: 'face' finds the subject with the face tracker, but no stages.face_tracker is "
                "selected; select one, or set ingest.crop: center"]
    tracker = config.stages.get(StageKind.FACE_TRACKER)
    if tracker is not None and not getattr(tracker.impl.cls, "can_locate", lambda: False)():
        return [f"ingest.crop: 'face' needs a face tracker that locates faces, and face_tracker "
                f"'{tracker.impl.cls.name}' has no 'locate' action; set ingest.crop: center"]
    return []


def load(name_or_path: str | Path | None, registry: Registry, overrides: list[str] | tuple[str, ...] = ()
         ) -> ResolvedConfig:
    """Load a config (a path, a shipped name, or the shipped default when None), apply ``--set`` overrides
    and validate it against the installed plugins."""
    path = find_config(name_or_path)
    return resolve(apply_overrides(load_yaml(path), list(overrides)), registry, str(path))


def dump_yaml(resolved: ResolvedConfig) -> str:
    return yaml.safe_dump(resolved.to_dict(), sort_keys=False)
