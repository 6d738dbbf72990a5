"""What an intervention method is: one registered object per method.

A method owns everything about itself: the config key that holds its grid, how a grid value
is written in a setting's name, whether it needs the model's internals (so cannot run behind an
HTTP API), the engine settings of a setting (:class:`~personadrift.generation.api.Intervention`),
its repetition of the system prompt, its guidance negative branch, which requests it acts on
(phase ``"dialog"``, ``"probe"`` or ``"mmlu"``), how many sequences one sampled reply costs
(scheduling and ``serve``'s batches), whether a single-turn prompt is left as the baseline runs
it, whether a setting is a control (no MMLU, no row in the trade-off), its colour and label in
the figures, and its ``personadrift serve`` flags. The workflow, the self-chat, MMLU, ``serve``
and the figures ask the method; nothing else compares method names.

Adding a method = one class that subclasses :class:`Method` (see ``split_softmax.py``), named
by an entry point of the group ``personadrift.methods`` in its package's pyproject.toml (this
package's own methods are registered so too; ``registry.py`` finds them), plus its tests. Its
entry keys are the method's own (:meth:`Method.entry_schema`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from personadrift.generation.api import Intervention

if TYPE_CHECKING:
    from personadrift.generation.dialog import Repetition
    from personadrift.interventions.settings import Setting

PHASES = ("dialog", "probe", "mmlu")
COMMON_KEYS = ("method", "backend")  # allowed in every entry


class EntryError(ValueError):
    """A problem with one key of one ``interventions.<family>`` entry (the caller adds the file)."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


class Method:
    """Base of every method. Subclasses set the class attributes and override what they use."""

    name: ClassVar[str]  # the config value of ``method``
    label: ClassVar[str]  # for figure legends
    grid_key: ClassVar[str | None] = None  # the config key holding the grid (None: no grid)
    short: ClassVar[str] = ""  # the grid key as written in setting names ("k" in ss-k0.5)
    needs_internals: ClassVar[bool] = False
    grid_item: ClassVar[dict] = {}  # JSON schema of one grid value
    grid_description: ClassVar[str] = ""
    options: ClassVar[dict] = {}  # method-specific keys besides the grid: key -> JSON schema with a default
    # True: the method leaves a conversation of one system prompt and one user message (every
    # MMLU question) exactly as the baseline runs it, so its MMLU scores are the baseline's and
    # the workflow copies them rather than scoring the same prompts again.
    single_turn_as_baseline: ClassVar[bool] = False
    color: ClassVar[str | None] = None  # figure colour; None: the next spare colour
    # ``personadrift serve`` flags: {flag: (entry key, argparse keywords)}. The first flag holds
    # the grid value and switches the method on; the others set its options.
    serve_flags: ClassVar[dict] = {}

    # ------------------------------------------------------------------ config
    def entry_schema(self) -> dict:
        """The JSON schema of an ``interventions.<family>`` entry of this method: every key it
        may carry (others are errors, so a key of another method is never silently ignored)."""
        props = {
            "method": {"const": self.name},
            # its values, the registered backends, are filled in by the config check (runtime/backends/)
            "backend": {"type": "string", "description": "Backend of this setting's self-chat (default: the "
                        "study's backend). Methods that need the model's internals need a backend that gives "
                        "them (hf)."},
            **self.options,
        }
        required = ["method"]
        if self.grid_key:
            props[self.grid_key] = {"type": "array", "items": self.grid_item, "minItems": 1, "uniqueItems": True,
                                    "description": self.grid_description}
            props["chosen"] = {"type": ["number", "null"], "description": "Grid value drawn in the "
                               "over-rounds figure (default: the middle of the grid); must be in the grid."}
            required.append(self.grid_key)
        return {"type": "object", "properties": props, "required": required, "additionalProperties": False}

    def defaults(self) -> dict:
        return {k: v["default"] for k, v in self.options.items() if "default" in v}

    def check(self, family: str, entry: dict) -> None:
        """Method-specific checks of one config entry; raise :class:`EntryError`."""

    def check_depth(self, setting: Setting, n_layers: int) -> None:
        """Checks against the model once its depth is known (at planning or at job start)."""

    def check_heads(self, setting: Setting, n_heads: int) -> None:
        """Checks against the model's number of query heads per layer, once known (at planning
        where the model's config.json is readable, else at job start)."""

    def check_tokenizer(self, setting: Setting, tokenizer) -> None:
        """Checks against the model's tokenizer at job start, before the engine is built."""

    def inputs(self, setting: Setting, results: str) -> dict[str, str]:
        """Files this setting's model jobs (self-chat, MMLU) read besides the model, name -> path
        under the study's results folder ``results`` (persona vectors, say). The rules make them
        inputs of those jobs, so the rules that write them run first, and the steps hand them to
        the setting (:meth:`Setting.with_inputs`); none by default."""
        return {}

    # ------------------------------------------------------------------ runtime
    def intervention(self, setting: Setting) -> Intervention:
        """The engine settings of ``setting`` (none by default)."""
        return Intervention()

    def repetition(self, setting: Setting) -> Repetition | None:
        return None

    def negative_messages(self, setting: Setting, messages: list[dict]) -> list[dict] | None:
        """The guidance branch for ``messages`` (None: no guidance)."""
        return None

    def intervenes(self, setting: Setting, phase: str) -> bool:
        """Whether a request of ``phase`` is generated with the engine intervention switched on."""
        return False

    def user_persona(self, setting: Setting) -> bool:
        """Whether the user bot gets its persona (False only in the length-only control)."""
        return True

    def rows_per_sample(self, setting: Setting) -> int:
        """Sequences decoded per sampled reply of an intervened request (guidance: two, the
        conditional and the unconditional branch): batch sizes and job priorities use it."""
        return 1

    def is_control(self, setting: Setting) -> bool:
        """A control setting: it has a self-chat and drift tables, but no MMLU job and no row
        in the mitigation trade-off (it controls for drift, it does not mitigate it)."""
        return False


def phase_name(phase: str) -> str:
    """``phase`` checked (``"probes"`` is accepted for ``"probe"``, as the self-chat calls it)."""
    phase = "probe" if phase == "probes" else phase
    if phase not in PHASES:
        raise ValueError(f"unknown request phase {phase!r}; known: {PHASES}")
    return phase


# the ``apply_to`` option of methods that act on the agent's generations: its schema, which
# :func:`applies_to` reads
APPLY_TO = {"enum": ["dialog", "probes", "both"], "default": "both",
            "description": "Agent generations the method applies to (MMLU: always)."}


def applies_to(setting: Setting, phase: str) -> bool:
    """The ``apply_to`` option (dialog | probes | both) for phases of the self-chat; MMLU always."""
    phase = phase_name(phase)
    if phase == "mmlu":
        return True
    where = setting.options.get("apply_to", "both")
    return where == "both" or where.rstrip("s") == phase
