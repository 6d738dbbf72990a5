"""Every installed intervention method, by name: :data:`METHODS`.

A method is found through the Python entry point group ``personadrift.methods``: the entry
point's name is the config's ``method:`` value and its object a :class:`Method` subclass.
personadrift's own methods are registered so in its pyproject.toml, exactly as a third-party
package registers its own; installing such a package is all it takes for the config check, the
rules, every step, ``serve`` and the figures to know its method.

Discovery happens on first use, once per process: it reads installed packages' metadata and
imports only the modules the entry points name (personadrift's own import no torch, so parsing
the workflow's DAG stays light). A plug-in that cannot be imported, names something that is not
a method, or takes a name already taken is one :class:`MethodPluginError` naming the entry point
and the distribution that declares it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib.metadata import EntryPoint, entry_points

from personadrift.errors import PersonaDriftError
from personadrift.interventions.base import Method

GROUP = "personadrift.methods"
OWN = "none"  # a method personadrift itself registers: its absence means personadrift's metadata is missing


class MethodPluginError(PersonaDriftError):
    """An entry point of ``personadrift.methods`` that does not give a usable method."""


def _declared_by(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"distribution {dist.name} {dist.version}" if dist is not None else "an unknown distribution"


def _where(ep: EntryPoint) -> str:
    return f"entry point '{ep.name} = {ep.value}' (group {GROUP}) of {_declared_by(ep)}"


def discover() -> dict[str, Method]:
    """Load every ``personadrift.methods`` entry point; name -> method, sorted by name."""
    by_name: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        by_name.setdefault(ep.name, []).append(ep)
    for name, eps in sorted(by_name.items()):
        if len(eps) > 1:
            raise MethodPluginError(f"the method name {name!r} is given by {len(eps)} entry points: "
                                    + "; ".join(sorted(map(_where, eps)))
                                    + ". Uninstall one of their packages, or rename its method")
    found: dict[str, Method] = {}
    for name, (ep,) in sorted(by_name.items()):
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - whatever the plug-in raises, say which plug-in
            raise MethodPluginError(f"{_where(ep)}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
        if not (isinstance(obj, type) and issubclass(obj, Method)):
            raise MethodPluginError(f"{_where(ep)}: {obj!r} is not a subclass of "
                                    "personadrift.interventions.base.Method")
        if getattr(obj, "name", None) != ep.name:
            raise MethodPluginError(f"{_where(ep)}: the class's name is {getattr(obj, 'name', None)!r}; an entry "
                                    "point is named after its method's name (the config's method: value)")
        found[name] = obj()
    if OWN not in found:
        raise MethodPluginError(f"no entry point of group {GROUP} gives personadrift's own method {OWN!r}: "
                                "personadrift's package metadata is missing or stale (run 'make setup', or "
                                "'pip install -e .' in the repository)")
    return found


class Methods(Mapping[str, Method]):
    """The installed methods (name -> :class:`Method`), discovered on first use."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] | None = None

    def _loaded(self) -> dict[str, Method]:
        if self._methods is None:
            self._methods = discover()
        return self._methods

    def __getitem__(self, name: str) -> Method:
        return self._loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def rediscover(self) -> None:
        """Forget what was found: the next use discovers again (after a package was installed
        into, or removed from, the running process's path)."""
        self._methods = None


METHODS = Methods()
