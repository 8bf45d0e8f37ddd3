"""Calibrations are keyed by the model's weights (LoRAs included), and the calibration folder
honours extra_model_paths.yaml."""

from __future__ import annotations

import importlib

import torch


def _identity_and_testbed(comfy_session):
    """The pack's model-identity module and the testbed loaded as a ComfyUI model."""
    pack = comfy_session.pack_module.__name__
    testbed_nodes = importlib.import_module(f"{pack}.nodes.testbed_nodes")
    return importlib.import_module(f"{pack}.nodes._model_id"), testbed_nodes.shared_testbed()[1]


def test_weight_patches_change_the_model_identity(comfy_session):
    model_id, model = _identity_and_testbed(comfy_session)
    base_id = model_id.model_identity(model)
    assert base_id == model_id.model_identity(model.clone())        # clones and wrappers do not matter
    lora = model.clone()
    key = next(k for k in lora.model_state_dict() if k.endswith("conv_in.weight"))
    lora.add_patches({key: (torch.full_like(lora.model_state_dict()[key], 0.01),)}, 0.7)
    assert model_id.model_identity(lora) != base_id
    stronger = model.clone()
    stronger.add_patches({key: (torch.full_like(stronger.model_state_dict()[key], 0.01),)}, 0.9)
    assert model_id.model_identity(stronger) not in (base_id, model_id.model_identity(lora))


def _bypass_lora(patcher, key: str, strength: float):
    """A LoRA applied at forward time, as newer ComfyUI's LoraLoaderBypass does: a
    BypassInjectionManager's injection under `injections["bypass_lora"]`. ComfyUI 0.3.75 has no
    BypassInjectionManager, so there a stand-in built the same way (adapters by module key, an
    inject closure over the manager) plays it; the adapter and PatcherInjection are ComfyUI's."""
    import comfy.weight_adapter
    from comfy.patcher_extension import PatcherInjection

    weight = patcher.model_state_dict()[key]
    up, down = torch.full((weight.shape[0], 1), 0.01), torch.full((1, weight[0].numel()), 0.01)
    adapter = comfy.weight_adapter.LoRAAdapter({key}, (up, down, None, None, None, None))
    manager_class = getattr(comfy.weight_adapter, "BypassInjectionManager", None)
    if manager_class is not None:
        manager = manager_class()
        manager.add_adapter(key, adapter, strength=strength)
        injections = manager.create_injections(patcher.model)
    else:
        class Manager:     # BypassInjectionManager reduced to what the identity reads
            def __init__(self):
                self.adapters = {key.removesuffix(".weight"): (adapter, strength)}

            def create_injections(self):
                def inject_all(model_patcher):               # a closure over the manager, as ComfyUI's
                    return self.adapters
                return [PatcherInjection(inject=inject_all, eject=inject_all)]
        injections = Manager().create_injections()
    patcher.set_injections("bypass_lora", injections)
    return patcher


def test_bypass_loras_and_other_injections_change_the_model_identity(comfy_session):
    from comfy.patcher_extension import PatcherInjection

    model_id, model = _identity_and_testbed(comfy_session)
    base_id = model_id.model_identity(model)
    key = next(k for k in model.model_state_dict() if k.endswith("conv_in.weight"))
    lora = _bypass_lora(model.clone(), key, 0.8)
    lora_id = model_id.model_identity(lora)
    assert lora_id != base_id
    assert model_id.model_identity(lora.clone()) == lora_id           # a clone shares the injection
    assert model_id.model_identity(_bypass_lora(model.clone(), key, 0.5)) not in (base_id, lora_id)
    assert model_id.model_identity(model) == base_id                  # the original is untouched

    def noop(model_patcher):
        pass
    other = model.clone()
    other.set_injections("another_pack", [PatcherInjection(inject=noop, eject=noop)])
    assert model_id.model_identity(other) not in (base_id, lora_id)
    other.remove_injections("another_pack")
    assert model_id.model_identity(other) == base_id                  # the cached identity follows


def test_identity_does_not_change_when_comfyui_patches_the_weights_in_place(comfy_session):
    import comfy.model_management

    model_id, model = _identity_and_testbed(comfy_session)
    lora = model.clone()
    key = "diffusion_model." + model_id.sampled_names(model.model.diffusion_model)[0]   # a weight the identity samples
    lora.add_patches({key: (torch.full_like(lora.model_state_dict()[key], 0.01),)}, 0.5)
    before = model_id.model_identity(lora)
    try:
        comfy.model_management.load_models_gpu([lora])       # LoRA weights are written into the model
        model_id._cache.clear()
        assert model_id.model_identity(lora) == before
    finally:
        comfy.model_management.unload_all_models()           # restores the original weights
        model_id._cache.clear()


def test_identity_reads_quantized_and_placeholder_weights(comfy_session):
    """Newer ComfyUI holds fp8 / mixed-precision weights as quantized tensors (numpy cannot read
    them; their stored data is `_qdata`) and, with dynamic VRAM, a weight still loading can be a
    meta placeholder. No such ComfyUI runs here: a stand-in class plays the quantized tensor."""
    pack = comfy_session.pack_module.__name__
    model_id = importlib.import_module(f"{pack}.nodes._model_id")

    class Quantized:
        def __init__(self, data):
            self._qdata, self.shape = data, data.shape

    stored = torch.arange(6, dtype=torch.float32).view(2, 3)
    assert model_id._tensor_bytes(Quantized(stored)) == model_id._tensor_bytes(stored)
    assert model_id._tensor_bytes(torch.empty(2, 3, device="meta")) == str((2, 3)).encode()
    assert model_id._tensor_bytes(torch.zeros(0)) == b"(0,)"


def test_identity_samples_only_leaf_module_weights(comfy_session):
    pack = comfy_session.pack_module.__name__
    model_id = importlib.import_module(f"{pack}.nodes._model_id")

    class Block(torch.nn.Module):        # owns a parameter and a child: ComfyUI may cast such a one at load
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))
            self.proj = torch.nn.Linear(3, 3)

    names = model_id.sampled_names(torch.nn.Sequential(Block(), torch.nn.Linear(3, 2)))
    assert names == ["0.proj.bias", "0.proj.weight", "1.bias", "1.weight"]


def test_calibration_folder_from_extra_model_paths_keeps_its_paths(comfy_session, tmp_path):
    import folder_paths

    pack = comfy_session.pack_module.__name__
    paths = importlib.import_module(f"{pack}.nodes._paths")
    saved = folder_paths.folder_names_and_paths.get(paths.FOLDER)
    try:
        # what extra_model_paths.yaml leaves behind for an unknown key: the path, with no extension filter
        folder_paths.folder_names_and_paths[paths.FOLDER] = ([str(tmp_path)], set())
        paths.register()
        assert folder_paths.folder_names_and_paths[paths.FOLDER] == ([str(tmp_path)], {".safetensors"})
        (tmp_path / "a.safetensors").write_bytes(b"x")
        (tmp_path / "notes.txt").write_text("not a region")
        folder_paths.filename_list_cache.clear()
        assert paths.list_files() == ["a.safetensors"]
    finally:
        folder_paths.folder_names_and_paths[paths.FOLDER] = saved
        folder_paths.filename_list_cache.clear()
