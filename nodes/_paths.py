"""The calibration folder: models/memguard_calibration (also configurable in extra_model_paths.yaml)."""

from __future__ import annotations

import os

import folder_paths

FOLDER = "memguard_calibration"
EXTENSIONS = {".safetensors"}
AUTO_SUBFOLDER = "auto"   # where automatic calibrations are cached


def register() -> None:
    """Add our folder key without disturbing paths that extra_model_paths.yaml already set."""
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, _ = folder_paths.folder_names_and_paths[FOLDER]
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([os.path.join(folder_paths.models_dir, FOLDER)], set(EXTENSIONS))


def folders() -> list[str]:
    return list(folder_paths.get_folder_paths(FOLDER))


def list_files() -> list[str]:
    return folder_paths.get_filename_list(FOLDER)


def resolve(name: str) -> str:
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise FileNotFoundError(
            f"Calibration file {name!r} was not found. Searched: {', '.join(folders())} "
            f"(extensions: {', '.join(sorted(EXTENSIONS))}; folder key '{FOLDER}' in extra_model_paths.yaml).")
    return path


def save_dir() -> str:
    return folders()[0]


def auto_dir() -> str:
    return os.path.join(save_dir(), AUTO_SUBFOLDER)
