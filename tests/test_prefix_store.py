"""The prefix store keeps each layer's re-used prefix on that layer's device while its budget
allows, and spills the least recently used to host memory when it does not: on the CPU with the
virtual-device harness (tests/support/virtual_devices.py), where a model spread over several
"devices" runs as it would over several GPUs."""

from __future__ import annotations

import pytest
import torch

from personadrift.generation.api import GenRequest, Intervention, Sampling
from personadrift.generation.engine import HFEngine
from personadrift.generation.kv_buffers import Prefix, PrefixStore
from support.interventions import guided, split
from support.virtual_devices import spread_over_virtual_devices, virtual_devices

SYSTEMS = ["You love tennis.", "Always answer in French, s'il vous plait.", "You are a pirate; talk like one."]


def convo(i):
    return [{"role": "system", "content": SYSTEMS[i % 3]}, {"role": "user", "content": "What is your hobby?" + " really" * (3 * i)}]


def load(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(), tok


class CappedStore(PrefixStore):
    """A store that checks its cap after every placement."""

    def __init__(self, cap):
        super().__init__("cpu", budget_bytes=cap)
        self.checked = 0

    def put(self, key, prefix):
        super().put(key, prefix)
        assert all(n <= self.budget_bytes for n in self.held_bytes().values()), self.held_bytes()
        self.checked += 1


def dialog(eng: HFEngine, turns: int = 3) -> list:
    """Dialog turns of 4 conversations (each re-uses its stored prefix), probes forked from them."""

    def req(i, msgs, **kw):
        return GenRequest(msgs, seed=i, key=f"c{i}", intervene=True, negative_messages=msgs[1:], **kw)

    convs = [convo(i) for i in range(4)]
    out = []
    for t in range(turns):
        texts = eng.generate([req(i, c, max_new_tokens=3 + i) for i, c in enumerate(convs)])
        out.append(texts)
        convs = [c + [{"role": "assistant", "content": x[0]}, {"role": "user", "content": f"Turn {t}?"}]
                 for c, x in zip(convs, texts)]
        out.append(eng.generate([req(i, c, n=2, persist=False) for i, c in enumerate(convs)], max_new_tokens=3))
    assert eng.stats.reused_tokens > 0
    return out


def homes(eng):
    return {k: [str(k_.device) for k_, _ in p.kv] for k, p in eng.prefixes.items()}


@pytest.mark.parametrize("name", ["none", "split", "guidance"])
def test_prefixes_stay_on_their_layers_devices_or_spill_and_come_back_with_the_same_texts(tiny_model_dir, name):
    iv = {"none": Intervention(), "split": split(0.5), "guidance": guided(2.0)}[name]
    s = Sampling(max_new_tokens=6)
    model, tok = load(tiny_model_dir)
    expected = dialog(HFEngine(model, tok, sampling=s, intervention=iv))
    with virtual_devices():
        spread_over_virtual_devices(model, 3)
        layer_devices = [str(next(layer.parameters()).device) for layer in model.model.layers]
        assert layer_devices == ["vdev:1", "vdev:2"]

        # no budget on a virtual device (no free-memory figure, as on a host): every prefix stays
        eng = HFEngine(model, tok, sampling=s, intervention=iv)
        assert dialog(eng) == expected
        assert eng.prefixes.spills == 0 and len(eng.prefixes) >= 4
        assert all(devs == layer_devices for devs in homes(eng).values())

        # a cap a little above one prefix's layer: the least recently used spill, and come back
        one = max(n for p in [eng.prefixes.get("c0")] for n in p.bytes_by_device().values())
        capped = HFEngine(model, tok, sampling=s, intervention=iv)
        capped.prefixes = CappedStore(int(1.5 * one))
        assert dialog(capped) == expected
        store = capped.prefixes
        assert store.spills > 0 and store.checked > 0
        assert all(n <= store.budget_bytes for n in store.peak.values())
        placed = homes(capped)
        assert any(devs == ["cpu", "cpu"] for devs in placed.values())  # spilled to the host
        assert any(devs == layer_devices for devs in placed.values())  # the most recent stays
        assert all(p.homes == [torch.device(d) for d in layer_devices] for _, p in store.items())


def _prefix(device, n=10, layers=2):
    return Prefix(list(range(n)), [(torch.ones(2, n, 4, device=device), torch.ones(2, n, 4, device=device))
                                   for _ in range(layers)])


def test_the_budget_follows_free_memory_and_spills_the_least_recently_used():
    with virtual_devices():
        dev = torch.device("vdev", 0)
        size = _prefix(dev).bytes_by_device()[dev]
        # a device of 4 prefixes' memory: what the store holds is not free (memory.free_bytes' figure)
        store = PrefixStore("cpu", free=lambda d: None if d.type == "cpu" else 4 * size - store.held_bytes().get(d, 0))

        def where():
            return {k: p.kv[0][0].device.type for k, p in store.items()}

        for key in "abc":
            store.put(key, _prefix(dev))
        # the budget is half of (free + held): 2 prefixes; the least recently used went to the host
        assert where() == {"a": "cpu", "b": "vdev", "c": "vdev"} and store.held_bytes() == {dev: 2 * size}
        store.get("b")  # used: now more recent than "c"
        store.put("d", _prefix(dev))
        assert where() == {"a": "cpu", "c": "cpu", "b": "vdev", "d": "vdev"}
        assert store.spills == 2 and store.peak == {"vdev:0": 2 * size}
        # a spilled prefix comes back to its layer's device when a batch reads it
        back = store.get("a").layer(1, 0)
        assert back.device == dev and torch.equal(back.cpu(), torch.ones(2, 10, 4))
        store.spill_all()
        assert store.held_bytes() == {} and set(where().values()) == {"cpu"}


def test_on_a_host_nothing_moves(tiny_model):
    model, tok = tiny_model
    eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=4))
    eng.generate([GenRequest(convo(i), seed=i, key=f"c{i}") for i in range(3)])
    assert len(eng.prefixes) == 3 and eng.prefixes.spills == 0
    assert eng.prefixes.held_bytes() == {}  # the host is the store's own memory: no budget applies
    assert all(k.device.type == "cpu" for _, p in eng.prefixes.items() for k, _ in p.kv)


def test_a_call_bounds_the_store_by_the_rows_it_would_displace(tiny_model_dir, monkeypatch):
    """On a device of limited memory, a call's rows come first: the store spills its least
    recently used prefixes until what it holds fits beside them (memory.plan_rows), and keeps
    them on the device when the rows leave room."""
    from personadrift.generation import memory

    model, tok = load(tiny_model_dir)
    with virtual_devices():
        spread_over_virtual_devices(model, 3)
        devices = set(memory.kv_bytes_by_device(model))
        room = {"bytes": 10**9}

        def free(d):  # what the store holds is not free, as on a GPU
            return None if d.type == "cpu" else room["bytes"] - eng.prefixes.held_bytes().get(d, 0)

        monkeypatch.setattr(memory, "free_bytes", free)
        eng = HFEngine(model, tok, sampling=Sampling(max_new_tokens=4), max_batch=4)
        reqs = [GenRequest(convo(i), seed=i, key=f"c{i}") for i in range(4)]
        eng.generate(reqs)
        assert set(eng.prefixes.held_bytes()) == devices and eng.prefixes.spills == 0  # room for both
        # now a device that holds the next call's 4 rows and little more
        nxt = [GenRequest(r.messages + [{"role": "assistant", "content": "Yes."}, {"role": "user", "content": "So?"}],
                          seed=i, key=f"c{i}") for i, r in enumerate(reqs)]
        ids = [eng.chat.render(r.messages).ids for r in nxt]
        new = max(memory._new_tokens(eng.prefixes, r.key, x) for r, x in zip(nxt, ids))
        assert new < min(len(x) for x in ids) // 2  # the stored prefixes are not encoded again
        need = max(memory.row_bytes(model, max(map(len, ids)) + 4, new).values())
        room["bytes"] = int(4.2 * need / memory.USABLE_FRACTION)
        assert memory.call_rows(eng, nxt, 4) == 4  # every row fits: the store made room
        assert eng.prefixes.spills > 0
        for d, n in eng.prefixes.held_bytes().items():
            assert n <= eng.prefixes.limits[d] < need


def test_spilled_prefixes_stay_under_the_jobs_host_memory():
    """Prefixes spilled from a device to (pinned) host memory stay under ``host_bytes`` (the
    job's share of its mem_mb): beyond it the least recently used spilled ones are dropped, to
    be encoded again, rather than the job killed for its memory."""
    from personadrift.job import HOST_SPILL_FRACTION, JobResources

    with virtual_devices():
        dev = torch.device("vdev", 0)
        size = _prefix(dev).bytes_by_device()[dev]
        store = PrefixStore("cpu", budget_bytes=size, host_bytes=2 * size)  # one on the device, two spilled
        for key in "abcde":
            store.put(key, _prefix(dev))
            assert store.spilled_bytes() <= 2 * size
        assert list(k for k, _ in store.items()) == ["c", "d", "e"] and store.dropped == 2
        assert store.held_bytes() == {dev: size} and store.spilled_bytes() == 2 * size
        assert store.get("a") is None  # dropped: its conversation is encoded again
        # a CPU-only store is the host's own memory: nothing is "spilled", nothing dropped
        host = PrefixStore("cpu", host_bytes=0)
        for key in "ab":
            host.put(key, _prefix("cpu"))
        assert len(host) == 2 and host.dropped == 0
    assert JobResources(mem_mb=1000).host_spill_bytes() == int(1000 * 2**20 * HOST_SPILL_FRACTION)
    assert JobResources().host_spill_bytes() is None
