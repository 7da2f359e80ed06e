"""The compression methods by name: one registry for ``pocketrec compress``, ``pocketrec bench`` and the benchmarks.

A method is a recipe: its config dataclass (a :class:`~pocketrec.methods.recipe.RecipeConfig` subclass:
``teacher``, ``dataset``, ``budget``, ``out``, ``dtype`` and the method's own keys, each overridable as
``--key=value``) and the function that runs it, ``compress(cfg, dataset) -> (model, CompressResult)``.
Both are registered as ``"module:name"`` strings and imported on first use, as
:data:`pocketrec.backbones.base.BACKBONES` does, so listing or checking names imports no method (and no
torch). A new method is its module plus one :func:`register` line at the bottom of this file.

The baselines a compressed student is compared with are registered the same way, so that every tool shares
one vocabulary. ``kind`` says how a method gets its weights, which is what ``pocketrec bench`` needs to know
to give it a training schedule:

* ``"student"``: distilled from the teacher (its config has ``train``; the bench gives it ``student``);
* ``"scratch"``: trained from scratch without the teacher (``train``; the bench gives it the teacher's);
* ``"post-hoc"``: the teacher's table compressed after training, no training (``seed``; the bench gives it
  ``student.seed``).

``fixed_size`` methods (``int8``, ``int4``) ignore the budget: their size follows from the teacher's table.
``defaults`` are ``key=value`` overrides over the config class's own defaults, so one recipe can be
registered twice (``tt`` is OD-Rec with ``t=1``); they apply before a YAML file and ``--key=value``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pocketrec.methods.recipe import CompressResult, RecipeConfig

#: how a method gets its weights (see the module docstring)
KINDS = ("student", "scratch", "post-hoc")


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Method:
    """One registered method: its name, ``"module:Class"`` config, ``"module:function"`` runner, and a line
    that says what it is (see the module docstring for ``kind``, ``fixed_size`` and ``defaults``)."""

    name: str
    config: str
    run: str
    description: str
    kind: str = "student"
    fixed_size: bool = False
    defaults: tuple[str, ...] = ()
    #: the teachers it compresses: "session" (session encoders) or "cf" (LightGCN / user-vector models)
    family: str = "session"
    #: the method of the run it takes as ``--teacher`` when that is not a teacher (PEEL refines a RULE run)
    teacher_method: str = ""

    def config_class(self) -> type[RecipeConfig]:
        """The config dataclass (imports the method's module)."""
        return _resolve(self.config)

    def runner(self) -> Callable[[Any, Any], tuple[Any, CompressResult]]:
        """``compress(cfg, dataset) -> (model, CompressResult)`` (imports the method's module)."""
        return _resolve(self.run)

    def load_config(self, path: str | Path | None = None,
                    overrides: list[str] | dict[str, Any] | None = None) -> RecipeConfig:
        """The method's config: class defaults, then ``defaults``, then the YAML at ``path``, then ``overrides``
        (``key=value`` strings, as :func:`pocketrec.config.load_config`)."""
        from pocketrec.config import load_config

        cls = self.config_class()
        base = load_config(cls, None, list(self.defaults))
        return load_config(cls, path, overrides, base=base)

    def compress(self, cfg: RecipeConfig, dataset: Any) -> tuple[Any, CompressResult]:
        """Run the method with ``cfg`` (from :meth:`load_config`) on ``dataset``; a teacher of the other family
        is refused first (``ValueError`` naming the methods that fit it)."""
        if getattr(cfg, "teacher", ""):
            self.check_teacher(cfg.teacher)
        return self.runner()(cfg, dataset)

    def check_teacher(self, teacher: str | Path) -> None:
        """``ValueError`` unless the checkpoint ``teacher`` is of this method's family."""
        from pocketrec.backbones.base import DEFAULT_BACKBONE
        from pocketrec.train.checkpoint import read_meta

        path = Path(teacher)
        if (path / "best" / "checkpoint.json").is_file():  # a run folder (RULE's, for PEEL): its best checkpoint
            path = path / "best"
        meta = read_meta(path)
        if self.teacher_method and meta.get("method") != self.teacher_method:
            raise ValueError(f"{path} is a {meta.get('method') or 'teacher'!r} checkpoint: {self.name} refines a "
                             f"{self.teacher_method} run (--teacher runs/{self.teacher_method}-DATASET, from "
                             f"`pocketrec compress --method {self.teacher_method}`)")
        backbone = meta.get("backbone", DEFAULT_BACKBONE)
        family = "session" if backbone == DEFAULT_BACKBONE else "cf"
        if family != self.family:
            raise ValueError(f"method {self.name!r} compresses {self.family} teachers, but {teacher} is a {backbone!r} "
                             f"model: use one of {', '.join(method_names(family))}")


#: what a method compresses (its teacher's family)
FAMILIES = ("session", "cf")
#: method name -> :class:`Method`, in registration order (the order ``pocketrec bench`` runs them in)
METHODS: dict[str, Method] = {}


def register(name: str, config: str, run: str, description: str, *, kind: str = "student",
             fixed_size: bool = False, defaults: tuple[str, ...] = (), family: str = "session",
             teacher_method: str = "") -> Method:
    """Add a method (``config``: ``"module:Class"``, ``run``: ``"module:function"``); nothing is imported."""
    if name in METHODS:
        raise ValueError(f"method {name!r} is already registered")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    for target in (config, run):
        if target.count(":") != 1:
            raise ValueError(f"{target!r} is not of the form 'module:name'")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    METHODS[name] = method = Method(name, config, run, description, kind, fixed_size, tuple(defaults), family,
                                    teacher_method)
    return method


def method_names(family: str | None = None) -> tuple[str, ...]:
    """The registered names (of one ``family`` when given), in registration order."""
    return tuple(name for name, m in METHODS.items() if family is None or m.family == family)


def unknown_method_error(names: str | list[str] | tuple[str, ...], what: str = "method") -> ValueError:
    """The one error for names that are not registered: it lists the known ones."""
    shown = repr(names) if isinstance(names, str) else str(sorted(names))
    plural = "" if isinstance(names, str) else "s"
    return ValueError(f"unknown {what}{plural} {shown} (known: {', '.join(METHODS)})")


def get_method(name: str) -> Method:
    """The method registered as ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in METHODS:
        raise unknown_method_error(name)
    return METHODS[name]


_ODREC, _EODREC, _BASE = "pocketrec.methods.odrec", "pocketrec.methods.eodrec", "pocketrec.bench.baselines"

register("odrec", f"{_ODREC}:ODRecConfig", f"{_ODREC}:compress_from_config",
         "OD-Rec (SIGIR 2022): semi-tensor-product tensor-train table (t=2), self-supervised distillation")
register("tt", f"{_ODREC}:ODRecConfig", f"{_ODREC}:compress_from_config",
         "plain tensor-train table: OD-Rec with t=1, same distillation", defaults=("t=1",))
register("eodrec", f"{_EODREC}:EODRecConfig", f"{_EODREC}:compress_from_config",
         "EODRec (TOIS 2023): compositional codes over shared codebooks, distilled")
register("dense-small", f"{_BASE}:DenseSmallConfig", f"{_BASE}:compress_dense_small",
         "baseline: a dense table of the budget's bytes (smaller d) trained from scratch", kind="scratch")
register("kmeans", f"{_BASE}:KMeansConfig", f"{_BASE}:compress_kmeans",
         "baseline: the teacher's rows as residual k-means codebooks at the budget, no training", kind="post-hoc")
register("int8", f"{_BASE}:Int8Config", f"{_BASE}:compress_quantized",
         "baseline: the teacher's rows quantised to 8 bits, no training (fixed size)", kind="post-hoc",
         fixed_size=True)
register("int4", f"{_BASE}:Int4Config", f"{_BASE}:compress_quantized",
         "baseline: the teacher's rows quantised to 4 bits, no training (fixed size)", kind="post-hoc",
         fixed_size=True)

_CF = "pocketrec.methods.cf_compress"
register("cf-tt", f"{_CF}:CFTTConfig", f"{_CF}:compress_cf_tt",
         "collaborative filtering (LightGCN teacher): its propagated item vectors as a TT table, fine-tuned on BPR "
         "+ KD from the full model", family="cf")
register("cf-codebook", f"{_CF}:CFCodebookConfig", f"{_CF}:compress_cf_codebook",
         "collaborative filtering (LightGCN teacher): its propagated item vectors as codebooks, fine-tuned on BPR "
         "+ KD from the full model", family="cf")
register("cf-kmeans", f"{_CF}:CFKMeansConfig", f"{_CF}:compress_cf_kmeans",
         "baseline, collaborative filtering: residual k-means codebooks of the propagated item vectors, no training",
         kind="post-hoc", family="cf")
register("cf-dense-small", f"{_CF}:CFDenseSmallConfig", f"{_CF}:compress_cf_dense_small",
         "baseline, collaborative filtering: the teacher's backbone with a smaller d that fits, from scratch",
         kind="scratch", family="cf")
register("cf-int8", f"{_BASE}:Int8Config", f"{_CF}:compress_cf_quantized",
         "baseline, collaborative filtering: the propagated item vectors as 8-bit integers, no training (fixed size)",
         kind="post-hoc", fixed_size=True, family="cf")
register("cf-int4", f"{_BASE}:Int4Config", f"{_CF}:compress_cf_quantized",
         "baseline, collaborative filtering: the propagated item vectors as 4-bit integers, no training (fixed size)",
         kind="post-hoc", fixed_size=True, family="cf")
register("rule", "pocketrec.methods.rule:RuleConfig", "pocketrec.methods.rule:compress_rule",
         "RULE (KDD 2021), collaborative filtering: elastic item blocks trained once, then `pocketrec customize` "
         "fits any budget without retraining", family="cf")
register("peel", "pocketrec.methods.peel:PeelConfig", "pocketrec.methods.peel:compress_peel",
         "PEEL, collaborative filtering: a RULE model refined per user group with learned block weights; "
         "`pocketrec customize --group/--user` picks each group's blocks for any budget", family="cf",
         teacher_method="rule")
