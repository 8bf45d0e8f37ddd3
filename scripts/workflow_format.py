"""Convert between ComfyUI's two workflow formats with the node definitions of /object_info.

- UI format (what the editor saves and the Templates browser opens): nodes with positions, links
  and `widgets_values`, a positional list of the node's widget inputs in input order (an INT with
  control_after_generate, such as `seed`, is followed by its "fixed"/"randomize" control value).
- API format (what /prompt executes): {node_id: {"class_type", "inputs"}}.

Pure Python and JSON: used by the demo runner (against a running server's /object_info), the
workflow builder and the tests (against the in-process registry).
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def ordered_inputs(node_def: dict) -> list[tuple[str, object, dict]]:
    """(name, type, options) of every visible input, required first, in the node's order."""
    out = []
    inputs = node_def.get("input", {})
    order = node_def.get("input_order", {})
    for section in ("required", "optional"):
        specs = inputs.get(section, {}) or {}
        for name in order.get(section, list(specs)):
            spec = specs[name]
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, kind, options))
    return out


def is_widget(kind, options: dict) -> bool:
    if isinstance(kind, list):       # V1 combo: the list of options is the type
        return True
    return kind in WIDGET_TYPES and not options.get("forceInput", False)


def has_control(name: str, kind, options: dict) -> bool:
    """Whether the frontend stores a control value ("fixed", ...) after this widget's value."""
    if kind != "INT" and not isinstance(kind, list) and kind != "COMBO":
        return False
    control = options.get("control_after_generate")
    if control is None:
        return kind == "INT" and name in ("seed", "noise_seed")
    return bool(control)


def widget_names(node_def: dict) -> list[tuple[str, bool]]:
    """(name, followed_by_control_value) of a node's widgets, in widgets_values order."""
    return [(name, has_control(name, kind, opts)) for name, kind, opts in ordered_inputs(node_def)
            if is_widget(kind, opts)]


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """A UI-format workflow -> an API-format prompt (muted/bypassed and virtual nodes dropped)."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):
            continue
        if kind not in object_info:
            raise KeyError(f"workflow node {node['id']} has type {kind!r}, which this ComfyUI does not know "
                           "(a missing custom node pack?)")
        node_def = object_info[kind]
        inputs = {}
        values = list(node.get("widgets_values") or [])
        pos = 0
        linked = {i["name"]: i.get("link") for i in node.get("inputs", []) if i.get("link") is not None}
        for name, control in widget_names(node_def):
            if pos >= len(values):
                raise ValueError(f"workflow node {node['id']} ({kind}) has {len(values)} widget values; "
                                 f"its widgets are {[n for n, _ in widget_names(node_def)]}")
            if name not in linked:
                inputs[name] = values[pos]
            pos += 2 if control else 1
        for name, link_id in linked.items():
            link = links[link_id]
            inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return prompt


def api_to_ui(prompt: dict, object_info: dict, layout: dict[str, tuple[int, int]] | None = None,
              titles: dict[str, str] | None = None, sizes: dict[str, tuple[int, int]] | None = None) -> dict:
    """An API-format prompt -> a UI-format workflow (positions from `layout`, else a grid)."""
    layout, titles, sizes = layout or {}, titles or {}, sizes or {}
    nodes, links = [], []
    outgoing: dict[tuple[str, int], list[int]] = {}
    next_link = 1
    ids = list(prompt)
    for node_id in ids:
        for name, value in prompt[node_id]["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                src, slot = value
                outgoing.setdefault((src, slot), []).append(next_link)
                links.append([next_link, int(src), slot, int(node_id), name, None])
                next_link += 1
    for order, node_id in enumerate(ids):
        spec = prompt[node_id]
        node_def = object_info[spec["class_type"]]
        sockets, values = [], []
        for name, kind, opts in ordered_inputs(node_def):
            value = spec["inputs"].get(name)
            socket_type = kind if isinstance(kind, str) else "COMBO"
            link_id = None
            for link in links:
                if link[3] == int(node_id) and link[4] == name:
                    link_id = link[0]
                    link[5] = socket_type
            if is_widget(kind, opts):
                if link_id is not None:   # a widget fed by a link keeps its slot in widgets_values
                    sockets.append({"name": name, "type": socket_type, "link": link_id, "widget": {"name": name}})
                    value = None
                if value is None:
                    value = opts.get("default", kind[0] if isinstance(kind, list) and kind else "")
                values.append(value)
                if has_control(name, kind, opts):
                    values.append("fixed")
            else:
                sockets.append({"name": name, "type": socket_type, "link": link_id})
        outputs = []
        for slot, (kind, name) in enumerate(zip(node_def.get("output", []), node_def.get("output_name", []))):
            outputs.append({"name": name, "type": kind, "links": outgoing.get((node_id, slot), []),
                            "slot_index": slot})
        x, y = layout.get(node_id, (50 + 320 * (order % 4), 50 + 260 * (order // 4)))
        node = {"id": int(node_id), "type": spec["class_type"], "pos": [x, y],
                "size": list(sizes.get(node_id, (300, 120 + 26 * len(values)))), "flags": {}, "order": order,
                "mode": 0, "inputs": sockets, "outputs": outputs,
                "properties": {"Node name for S&R": spec["class_type"]}, "widgets_values": values}
        if node_id in titles:
            node["title"] = titles[node_id]
        nodes.append(node)
    for link in links:   # UI links carry the target slot index, not the input name
        target = next(n for n in nodes if n["id"] == link[3])
        link[4] = [i["name"] for i in target["inputs"]].index(link[4])
    return {"last_node_id": max(int(i) for i in ids), "last_link_id": next_link - 1, "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
            "version": 0.4}
