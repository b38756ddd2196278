"""Builds per-client shards from a folder of your own labelled images.

Usage:
  python -m data_prep.image_folder --data_dir=DIR --output_dir=DIR
      [--num_clients=10] [--partition=dirichlet] [--partition_alpha=0.5]
      [--seed=0] [--eval_fraction=0.1] [--eval_data=DIR] [--image_size=0]

Two layouts, told apart by what the folders of DIR hold:
  DIR/<client_id>/<label>/<image>   the clients are the first folders
                                    (the natural partition; --num_clients=N
                                    keeps the N largest, 0 all);
  DIR/<label>/<image>               one pool of images, split into
                                    --num_clients clients, iid or Dirichlet
                                    label-skewed (FedML's hetero).
Images are .png, .jpg, .jpeg, .bmp or .gif files (others and hidden files
are skipped), decoded with Pillow. Labels are the label folders' names,
sorted, over every client. Images are stored as uint8 [height, width,
channels]: 1 channel when every image is grayscale, else 3 (RGB; alpha
dropped). Without --image_size all images must have one size; with it,
each is resized to N x N (bilinear).

Held out: --eval_data=DIR2 (DIR2/<label>/<image>) is the eval shard;
without it a seeded --eval_fraction of each client's images (at least one
stays with the client) goes to the eval shard.

An image that cannot be decoded is an error naming the file.
"""

import dataclasses
import hashlib
import os

from absl import flags
import numpy as np
import PIL.Image

# cli must stay the first data_prep import: it quiets TF's import-time
# logging before shards imports TensorFlow.
from data_prep import cli
from data_prep import entry_point
from data_prep import errors
from data_prep import partition as partition_lib
from data_prep import shards

TASK = "image_folder"
PARTITIONS = ("iid", "dirichlet", "natural")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
DEFAULT_EVAL_FRACTION = 0.1
DIRICHLET_MIN_EXAMPLES = 10
CLIENTS_LAYOUT = "clients"  # DIR/<client>/<label>/<image>
LABELS_LAYOUT = "labels"  # DIR/<label>/<image>
_GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclasses.dataclass(frozen=True)
class ImageFile:
  path: str
  label: str
  owner: str | None  # The client folder (clients layout).


def _visible(names: list[str]) -> list[str]:
  return sorted(n for n in names if not n.startswith("."))


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES)


def detect_layout(data_dir: str) -> str:
  """CLIENTS_LAYOUT or LABELS_LAYOUT, from what DIR's folders hold.

  Raises:
    DataPrepError: no folders, or folders of both kinds.
  """
  root = os.path.abspath(data_dir)
  if not os.path.isdir(root):
    raise errors.DataPrepError(
        f"--data_dir={data_dir} is not a folder; give DIR/<label>/<image> or "
        "DIR/<client>/<label>/<image>")
  kinds = {}
  for name in _visible(os.listdir(root)):
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
      continue
    entries = _visible(os.listdir(folder))
    has_dirs = any(os.path.isdir(os.path.join(folder, e)) for e in entries)
    has_images = any(_is_image(e) for e in entries)
    if has_dirs and has_images:
      raise errors.DataPrepError(
          f"{folder} holds both folders and images; put images in "
          "<label>/ folders (inside <client>/ folders, or not)")
    if has_dirs or has_images:
      kinds[folder] = CLIENTS_LAYOUT if has_dirs else LABELS_LAYOUT
  if not kinds:
    raise errors.DataPrepError(
        f"{root} has no folders of images; give DIR/<label>/<image> or "
        "DIR/<client>/<label>/<image>")
  if len(set(kinds.values())) > 1:
    first = {kind: folder for folder, kind in kinds.items()}
    raise errors.DataPrepError(
        f"{root} mixes label folders of images ({first[LABELS_LAYOUT]}) "
        f"and client folders of label folders ({first[CLIENTS_LAYOUT]}); "
        "use one layout")
  return next(iter(kinds.values()))


def list_images(data_dir: str, layout: str) -> list[ImageFile]:
  """Every image under DIR, in (client, label, name) order."""
  root = os.path.abspath(data_dir)
  owners = ([None] if layout == LABELS_LAYOUT else
            [n for n in _visible(os.listdir(root))
             if os.path.isdir(os.path.join(root, n))])
  found = []
  for owner in owners:
    base = root if owner is None else os.path.join(root, owner)
    for label in _visible(os.listdir(base)):
      folder = os.path.join(base, label)
      if not os.path.isdir(folder):
        continue
      for name in _visible(os.listdir(folder)):
        path = os.path.join(folder, name)
        if _is_image(name) and os.path.isfile(path):
          found.append(ImageFile(path=path, label=label, owner=owner))
  if not found:
    raise errors.DataPrepError(
        f"{root} holds no .png/.jpg images in its label folders; add some")
  return found


def _open(path: str) -> PIL.Image.Image:
  try:
    image = PIL.Image.open(path)
    image.load()  # Decodes now: a truncated file fails here.
    return image
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError
          ) as e:
    raise errors.DataFormatError(
        f"{path} is not a readable image ({type(e).__name__}: "
        f"{' '.join(str(e).split())[:120]}); replace or remove it") from None


def _peek(path: str) -> tuple[tuple[int, int], str]:
  """(width, height), mode from the file's header (no decoding)."""
  try:
    with PIL.Image.open(path) as image:
      return image.size, image.mode
  except (OSError, SyntaxError, ValueError) as e:
    raise errors.DataFormatError(
        f"{path} is not a readable image ({type(e).__name__}: "
        f"{' '.join(str(e).split())[:120]}); replace or remove it") from None


def image_shape(files: list[ImageFile], image_size: int) -> list[int]:
  """[height, width, channels] every image is stored as.

  Raises:
    DataFormatError: an unreadable image, or (without image_size) images of
      different sizes.
  """
  channels = 1
  first_size, first_path = None, None
  for f in files:
    size, mode = _peek(f.path)
    if mode not in _GRAYSCALE_MODES:
      channels = 3
    if first_size is None:
      first_size, first_path = size, f.path
    elif not image_size and size != first_size:
      raise errors.DataFormatError(
          f"{f.path} is {size[0]}x{size[1]} pixels but {first_path} is "
          f"{first_size[0]}x{first_size[1]}; pass --image_size=N to resize "
          "every image to N x N")
  width, height = (image_size, image_size) if image_size else first_size
  return [height, width, channels]


def read_pixels(path: str, shape: list[int]) -> np.ndarray:
  """The image at `path` as uint8 `shape` ([height, width, channels])."""
  height, width, channels = shape
  image = _open(path)
  image = image.convert("L" if channels == 1 else "RGB")
  if image.size != (width, height):
    image = image.resize((width, height), PIL.Image.BILINEAR)
  return np.asarray(image, np.uint8).reshape(shape)


def features_spec(shape: list[int]) -> dict:
  return {"pixels": {"kind": "bytes", "dtype": "uint8", "shape": shape},
          "label": {"kind": "int64", "shape": []}}


def prepare(data_dir: str, shard_dir: str, num_clients: int = 10,
            partition: str = "dirichlet", partition_alpha: float = 0.5,
            seed: int = 0, eval_fraction: float = DEFAULT_EVAL_FRACTION,
            eval_data: str = "", image_size: int = 0) -> shards.Manifest:
  """Reads the images and writes per-client shards (see the docstring).

  Raises:
    DataPrepError: a bad request or layout.
    DataFormatError: an unreadable image or mismatched sizes.
  """
  layout = _check_request(data_dir, num_clients, partition, partition_alpha,
                          eval_fraction, eval_data, image_size)
  files = list_images(data_dir, layout)
  eval_files = (list_images(eval_data, LABELS_LAYOUT) if eval_data else [])
  classes = sorted({f.label for f in files})
  label_index = {name: i for i, name in enumerate(classes)}
  unknown = sorted({f.label for f in eval_files} - set(classes))
  if unknown:
    raise errors.DataFormatError(
        f"{os.path.abspath(eval_data)}: label folders {unknown[:5]} do not "
        "occur in the training images; remove them")
  shape = image_shape(files + eval_files, image_size)
  labels = np.array([label_index[f.label] for f in files], np.int64)
  rng = np.random.default_rng(seed)
  groups = _clients(files, labels, num_clients, partition, partition_alpha,
                    rng)
  train_parts, held = [], []
  for name, indices in groups:
    if eval_data:
      train_parts.append((name, indices))
    else:
      kept, out = partition_lib.hold_out(indices, eval_fraction, rng)
      train_parts.append((name, kept))
      held.append(out)

  def columns(paths: list[str], label_ids: np.ndarray) -> dict:
    pixels = np.zeros([len(paths), *shape], np.uint8)
    for i, path in enumerate(paths):
      pixels[i] = read_pixels(path, shape)
    return {"pixels": pixels, "label": label_ids}

  if eval_data:
    eval_examples = columns([f.path for f in eval_files],
                            np.array([label_index[f.label]
                                      for f in eval_files], np.int64))
  else:
    rows = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    eval_examples = columns([files[i].path for i in rows], labels[rows])
  if not len(eval_examples["label"]):
    raise errors.DataPrepError(
        f"no held-out images: the clients of {data_dir} are too small for "
        f"--eval_fraction={eval_fraction}; raise it or give --eval_data")
  clients = ((name, columns([files[i].path for i in indices],
                            labels[indices]))
             for name, indices in train_parts)
  source = _source_record(data_dir, eval_data, image_size)
  source.update({"classes": classes, "layout": layout,
                 "num_images": len(files)})
  return shards.write_shards(
      shard_dir, TASK, features_spec(shape), clients,
      eval_examples=eval_examples, num_classes=len(classes),
      partition=_partition_record(num_clients, partition, partition_alpha,
                                  seed, eval_fraction, eval_data),
      source=source)


def find_or_prepare(data_dir: str, shard_dir: str, num_clients: int = 10,
                    partition: str = "dirichlet", partition_alpha: float = 0.5,
                    seed: int = 0, eval_fraction: float = DEFAULT_EVAL_FRACTION,
                    eval_data: str = "", image_size: int = 0
                    ) -> shards.Manifest:
  """Returns existing shards if built from the same request and files.

  "Same files" means the same paths, sizes and modification times (a
  digest of that listing is in the manifest). Args/Raises: as `prepare`.
  """
  _check_request(data_dir, num_clients, partition, partition_alpha,
                 eval_fraction, eval_data, image_size)
  wanted_source = _source_record(data_dir, eval_data, image_size)
  wanted_partition = _partition_record(num_clients, partition,
                                       partition_alpha, seed, eval_fraction,
                                       eval_data)
  manifest = shards.load_if_matching(
      shard_dir, lambda m: (
          m.task == TASK and m.partition == wanted_partition and
          {k: m.source.get(k) for k in wanted_source} == wanted_source))
  if manifest is not None:
    return manifest
  return prepare(data_dir, shard_dir, num_clients, partition, partition_alpha,
                 seed, eval_fraction, eval_data, image_size)


def _clients(files: list[ImageFile], labels: np.ndarray, num_clients: int,
             partition: str, partition_alpha: float,
             rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
  if partition == "natural":
    groups = partition_lib.natural([f.owner for f in files])
    if num_clients:
      largest = sorted(groups, key=lambda o: (-len(groups[o]), o))
      groups = {o: groups[o] for o in largest[:num_clients]}
    return sorted((partition_lib.safe_client_id(owner), rows)
                  for owner, rows in groups.items())
  if num_clients > len(files):
    raise errors.DataPrepError(
        f"--num_clients={num_clients} exceeds the {len(files)} images; use "
        "fewer clients")
  if partition == "iid":
    parts = partition_lib.iid(len(files), num_clients, rng)
  else:
    parts = partition_lib.dirichlet(
        labels, num_clients, partition_alpha, rng,
        min_examples=min(DIRICHLET_MIN_EXAMPLES, len(files) // num_clients))
  width = max(4, len(str(num_clients - 1)))
  return [(f"client_{i:0{width}d}", np.sort(part))
          for i, part in enumerate(parts)]


def _check_request(data_dir: str, num_clients: int, partition: str,
                   partition_alpha: float, eval_fraction: float,
                   eval_data: str, image_size: int) -> str:
  """Validates the request; returns the layout."""
  if not data_dir:
    raise errors.DataPrepError(
        "--task=image_folder needs --data_dir: DIR/<label>/<image> or "
        "DIR/<client>/<label>/<image>")
  layout = detect_layout(data_dir)
  if layout == CLIENTS_LAYOUT and partition != "natural":
    raise errors.DataPrepError(
        f"{os.path.abspath(data_dir)} holds client folders (<client>/<label>/"
        f"<image>), so its clients are natural; drop --partition={partition}")
  if layout == LABELS_LAYOUT:
    partition_lib.check_split(
        partition, num_clients, partition_alpha,
        f"{os.path.abspath(data_dir)} holds label folders, not client "
        "folders, so it has no natural clients")
  partition_lib.check_alpha(partition, partition_alpha)
  if not eval_data and not 0 < eval_fraction < 1:
    raise errors.DataPrepError(
        f"--eval_fraction={eval_fraction} must be in (0, 1), e.g. 0.1; or "
        "give --eval_data")
  if eval_data and detect_layout(eval_data) != LABELS_LAYOUT:
    raise errors.DataPrepError(
        f"--eval_data={eval_data} must hold <label>/<image> folders")
  if image_size < 0:
    raise errors.DataPrepError(f"--image_size={image_size} must be >= 0")
  return layout


def _partition_record(num_clients: int, partition: str,
                      partition_alpha: float, seed: int, eval_fraction: float,
                      eval_data: str) -> dict:
  return {"method": partition,
          "alpha": float(partition_alpha) if partition == "dirichlet" else None,
          "num_clients": num_clients, "seed": seed,
          "eval_fraction": None if eval_data else float(eval_fraction)}


def _listing_digest(data_dir: str) -> dict:
  """sha256 over every file's relative path, size and mtime (cheap)."""
  root = os.path.abspath(data_dir)
  digest, count = hashlib.sha256(), 0
  for folder, dirs, names in os.walk(root):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(folder, name)
      stat = os.stat(path)
      digest.update(f"{os.path.relpath(path, root)}\t{stat.st_size}\t"
                    f"{stat.st_mtime_ns}\n".encode())
      count += 1
  return {"path": root, "files": count, "listing_sha256": digest.hexdigest()}


def _source_record(data_dir: str, eval_data: str, image_size: int) -> dict:
  return {"data": _listing_digest(data_dir),
          "eval_data": _listing_digest(eval_data) if eval_data else None,
          "image_size": image_size}


# Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags of `python -m data_prep.image_folder`."""
  flags.DEFINE_string(
      "data_dir", None,
      "DIR/<label>/<image> or DIR/<client>/<label>/<image>.",
      required=True, flag_values=flag_values)
  flags.DEFINE_string(
      "output_dir", None,
      "Directory for manifest.json, clients/*.tfrecord and eval.tfrecord; "
      "replaced atomically if it holds earlier shards.",
      required=True, flag_values=flag_values)
  flags.DEFINE_integer(
      "num_clients", 10,
      "Clients to split a label-folder pool into; with client folders, keep "
      "the N largest (0: all).", flag_values=flag_values)
  flags.DEFINE_enum(
      "partition", None, list(PARTITIONS),
      "iid or dirichlet for label folders (default dirichlet); natural for "
      "client folders (the default there).", flag_values=flag_values)
  flags.DEFINE_float("partition_alpha", 0.5, "Dirichlet concentration.",
                     flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed of the partition and held-out images.",
                       flag_values=flag_values)
  flags.DEFINE_float(
      "eval_fraction", DEFAULT_EVAL_FRACTION,
      "Share of each client's images held out (without --eval_data).",
      flag_values=flag_values)
  flags.DEFINE_string("eval_data", "", "A folder of <label>/<image> held out.",
                      flag_values=flag_values)
  flags.DEFINE_integer("image_size", 0,
                       "Resize every image to N x N (0: keep; sizes must "
                       "agree).", flag_values=flag_values)


def make_main(flag_values: flags.FlagValues = flags.FLAGS):
  """Returns an absl main() that prepares image-folder shards from flags."""

  def prepare_from_flags(fv):
    partition = fv.partition or (
        "natural" if detect_layout(fv.data_dir) == CLIENTS_LAYOUT
        else "dirichlet")
    return prepare(fv.data_dir, fv.output_dir, fv.num_clients, partition,
                   fv.partition_alpha, fv.seed, fv.eval_fraction, fv.eval_data,
                   fv.image_size)

  return cli.prepare_main(prepare_from_flags, summary, flag_values)


def summary(manifest: shards.Manifest, seconds: float) -> str:
  shape = manifest.features["pixels"]["shape"]
  return (f"{cli.summary(manifest, seconds)}; "
          f"{len(manifest.source['classes'])} classes, images "
          f"{'x'.join(map(str, shape))}")


if __name__ == "__main__":
  define_flags()
  entry_point.run(make_main())
