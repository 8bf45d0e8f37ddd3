"""Node ids, input names, input order and outputs are a public API: saved workflows store widget
values by position. The snapshot may only grow: new nodes, inputs appended at the end, outputs
appended at the end. Record an intended change with MEMGUARD_UPDATE_SNAPSHOT=1."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parents[1] / "fixtures" / "schema_snapshot.json"
EXPECTED_IDS = {
    "MemGuardKSampler", "MemGuardModelPatch", "MemGuardReport", "MemGuardSampler", "MemGuardDetector",
    "MemGuardCalibrate", "MemGuardAutoCalibration", "MemGuardSaveCalibration", "MemGuardLoadCalibration",
    "MemGuardPromptList", "MemGuardTestbedLoader", "MemGuardTestbedTextEncode", "MemGuardTestbedEmptyLatent",
    "MemGuardTestbedDecode", "MemGuardSaveReport",
}


def current_schemas(pack) -> dict:
    extension = asyncio.run(pack.comfy_entrypoint())
    out = {}
    for cls in asyncio.run(extension.get_node_list()):
        schema = cls.GET_SCHEMA()
        out[schema.node_id] = {
            "inputs": [[i.id, i.get_io_type(), bool(i.optional)] for i in schema.inputs],
            "outputs": [[o.get_io_type(), o.display_name] for o in schema.outputs],
            "output_node": bool(schema.is_output_node),
        }
    return out


def compatibility_problems(old: dict, new: dict) -> list[str]:
    problems = []
    for node_id, before in old.items():
        after = new.get(node_id)
        if after is None:
            problems.append(f"{node_id}: node removed (keep it, deprecated)")
            continue
        n = len(before["inputs"])
        if after["inputs"][:n] != before["inputs"]:
            problems.append(f"{node_id}: inputs changed; before {before['inputs']}, now {after['inputs'][:n]}")
        for extra in after["inputs"][n:]:
            if not extra[2] and extra[1] not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                problems.append(f"{node_id}: appended input {extra[0]} is a required socket (breaks old graphs)")
        m = len(before["outputs"])
        if after["outputs"][:m] != before["outputs"]:
            problems.append(f"{node_id}: outputs changed; before {before['outputs']}, now {after['outputs'][:m]}")
        if after["output_node"] != before["output_node"]:
            problems.append(f"{node_id}: output-node flag changed")
    return problems


def test_every_node_is_registered(comfy_session):
    import nodes

    schemas = current_schemas(comfy_session.pack_module)
    assert set(schemas) == EXPECTED_IDS
    assert all(node_id in nodes.NODE_CLASS_MAPPINGS for node_id in EXPECTED_IDS)


def test_schemas_only_grow(comfy_session):
    schemas = current_schemas(comfy_session.pack_module)
    if os.environ.get("MEMGUARD_UPDATE_SNAPSHOT") == "1" or not SNAPSHOT.exists():
        if SNAPSHOT.exists():
            assert not compatibility_problems(json.loads(SNAPSHOT.read_text()), schemas)
        SNAPSHOT.write_text(json.dumps(schemas, indent=1, sort_keys=True) + "\n")
        if os.environ.get("MEMGUARD_UPDATE_SNAPSHOT") != "1":
            raise AssertionError(f"{SNAPSHOT} was missing and has been written: commit it")
    problems = compatibility_problems(json.loads(SNAPSHOT.read_text()), schemas)
    assert not problems, "\n".join(problems)


def test_the_rule_itself():
    old = {"A": {"inputs": [["x", "INT", False]], "outputs": [["LATENT", "LATENT"]], "output_node": False}}
    appended = {"A": {"inputs": [["x", "INT", False], ["y", "FLOAT", False]], "outputs": [["LATENT", "LATENT"]],
                      "output_node": False}}
    assert compatibility_problems(old, appended) == []
    reordered = {"A": {"inputs": [["y", "FLOAT", False], ["x", "INT", False]], "outputs": [["LATENT", "LATENT"]],
                       "output_node": False}}
    assert compatibility_problems(old, reordered)
    assert compatibility_problems(old, {})
    socket = {"A": {"inputs": [["x", "INT", False], ["m", "MODEL", False]], "outputs": [["LATENT", "LATENT"]],
                    "output_node": False}}
    assert compatibility_problems(old, socket)
