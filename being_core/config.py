"""Run configs: YAML that picks an implementation per stage, validated whole before anything runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, UnknownImplementationError, UsageError
from .registry import Registry
from .stage import STAGE_ORDER, StageConfig, StageKind

CONFIG_SCHEMA_VERSION = 1
RunnerName = Literal["inprocess", "subprocess", "docker"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestConfig(_Strict):
    fps: float = Field(25.0, gt=0, description="Frame rate of the dataset; every public trainer expects 25.")
    size: int | None = Field(512, ge=32, description="Square output size in pixels; null keeps the source size.")
    crop: Literal["center", "none"] = Field(
        "center", description="'center' crops the largest centred square before resizing; 'none' squashes."
    )
    audio: Literal["required", "optional"] = Field(
        "required", description="'optional' prepares a clip without an audio stream (no audio stage runs)."
    )
    min_frames: int = Field(50, ge=1, description="Shortest clip, in frames at `fps`, worth training on.")
    jpeg_quality: int = Field(2, ge=1, le=31, description="ffmpeg -q:v for ori_imgs (1 best, 31 worst).")


class RunnerOptions(_Strict):
    timeout_s: float | None = Field(None, gt=0, description="Wall-clock limit for the stage, seconds.")
    cpus: float | None = Field(None, gt=0, description="CPU limit for a containerised stage.")
    memory: str | None = Field(None, description="Memory limit for a containerised stage, e.g. '8g'.")
    gpu: bool | None = Field(None, description="Request a GPU; default: what the implementation declares.")
    image: str | None = Field(None, description="Image to run instead of the implementation's own tag.")
    cache: bool = Field(True, description="Mount a writable cache folder per image (~/.cache/being/containers/"
                        "<image>) at /cache, where e.g. numba keeps compiled kernels between runs.")


class StageSelection(_Strict):
    impl: str = Field(description="Implementation name, as listed by `being plugins`.")
    config: dict[str, Any] = Field(default_factory=dict, description="The implementation's own settings.")
    runner: RunnerName = Field("inprocess", description="Where the stage runs.")
    runner_options: RunnerOptions = Field(default_factory=RunnerOptions, description="Limits for the runner.")


class RunConfig(_Strict):
    schema_version: Literal[1] = Field(CONFIG_SCHEMA_VERSION, description="Config format version.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="How a video becomes frames and audio.")
    stages: dict[StageKind, StageSelection | None] = Field(
        default_factory=dict, description="Implementation per stage kind; null or absent skips the stage."
    )


@dataclass(frozen=True)
class ResolvedStage:
    kind: StageKind
    selection: StageSelection
    config: StageConfig


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
            str(k): {**data["stages"][str(k)], "config": rs.config.model_dump(mode="json")}
            if (rs := self.stages.get(k)) else None
            for k in STAGE_ORDER if str(k) in data["stages"]
        }
        return data


def default_config_path() -> Path:
    """``configs/default.yaml`` of the checkout Being runs from."""
    return Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


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


def _loc(prefix: str, err: dict[str, Any]) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in err["loc"]]
    return ".".join(parts)


def _describe(prefix: str, err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return f"{_loc(prefix, err)}: unknown key"
    return f"{_loc(prefix, err)}: {err['msg']}"


def resolve(data: dict[str, Any], registry: Registry, source: str = "config") -> ResolvedConfig:
    """Validate a whole config against the installed plugins; every problem is reported in one ConfigError."""
    problems: list[str] = []
    stages_raw = data.get("stages") if isinstance(data.get("stages"), dict) else {}
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
            continue
        if raw is not None and raw.stages.get(kind) is not None:
            resolved[kind] = ResolvedStage(kind, raw.stages[kind], cfg)
    if problems or raw is None:
        raise ConfigError(source, problems)
    return ResolvedConfig(raw, resolved, source)


def load(path: Path | None, registry: Registry, overrides: list[str] = ()) -> ResolvedConfig:
    """Load ``path`` (``configs/default.yaml`` when None), apply ``--set`` overrides and validate."""
    if path is None:
        path = default_config_path()
        data = load_yaml(path) if path.exists() else {}
    else:
        data = load_yaml(path)
    return resolve(apply_overrides(data, list(overrides)), registry, str(path))


def dump_yaml(resolved: ResolvedConfig) -> str:
    return yaml.safe_dump(resolved.to_dict(), sort_keys=False)
