"""A seeded random-resized crop and flip for FFCV's compiled pipeline.

FFCV draws its crops and flips from numba's per-thread random state, which nothing seeds: two
runs of the same recipe see other crops. :class:`SeededResizedCrop` decodes, crops and flips
in one operation whose draws are a function of ``(seed, epoch, sample)`` alone: each sample
seeds the drawing thread's state from a hash of the three before it draws, so the result does
not depend on which thread decodes it, on the batch size or on the order. The epoch changes
after the pipeline is compiled (numba freezes the arrays a compiled function closes over), so
the compiled code reads it from a one-element array through its address.

Imported only where FFCV is installed.
"""

from __future__ import annotations

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder, get_random_crop
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.compiler import Compiler
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _load_int64(typingctx, address):
    """The int64 stored at ``address`` (an integer), read when the compiled code runs."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], context.get_value_type(types.int64).as_pointer())
        return builder.load(ptr)

    return types.int64(address), codegen


def _mix(seed, epoch, sample):
    """A 32-bit seed from three integers (splitmix64's finaliser over their combination)."""
    z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ np.uint64(epoch)) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ np.uint64(sample)) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.uint32(z & np.uint64(0xFFFFFFFF))


_mix_c = njit(nogil=True)(_mix)


@njit(nogil=True)
def _flip_rows(img):
    """Mirror an (h, w, 3) image left to right, in place."""
    h, w = img.shape[0], img.shape[1]
    for r in range(h):
        for c in range(w // 2):
            for k in range(3):
                t = img[r, c, k]
                img[r, c, k] = img[r, w - 1 - c, k]
                img[r, w - 1 - c, k] = t


_random_crop_c = njit(nogil=True)(get_random_crop)  # torchvision's box sampling, as FFCV's decoder


class SeededResizedCrop(ResizedCropRGBImageDecoder):
    """Decode, random-resized crop (``scale``, ``ratio``: torchvision's box sampling) and, with
    ``flip``, mirror half the images; every draw follows ``(seed, epoch, sample index)``.
    :meth:`set_epoch` before each epoch's iteration."""

    def __init__(self, output_size, scale, ratio, seed: int, flip: bool = True):
        super().__init__(output_size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.seed, self.flip = int(seed), bool(flip)
        self._epoch = np.zeros(1, dtype=np.int64)  # read by the compiled code at its address

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    @property
    def get_crop_generator(self):
        return get_random_crop

    def generate_code(self):
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        crop_c, mix_c, flip_c = _random_crop_c, _mix_c, _flip_rows
        scale, ratio = np.array(self.scale), np.array(self.ratio)
        seed, flip, address = self.seed, self.flip, self._epoch.ctypes.data
        epoch_box = self._epoch
        load = _load_int64 if Compiler.is_enabled else (lambda _: epoch_box[0])  # FFCV's debug mode: no JIT

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            epoch = load(address)
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                if field["mode"] == jpg:
                    buf = temp_storage[dst_ix]
                    imdecode_c(image_data, buf, height, width, height, width, 0, 0, 1, 1, False, False)
                    image = buf.reshape(-1)[: 3 * height * width].reshape(height, width, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                np.random.seed(mix_c(seed, epoch, source_ix))
                i, j, h, w = crop_c(height, width, scale, ratio)
                resize_crop_c(image, i, i + h, j, j + w, destination[dst_ix])
                if flip and np.random.random() < 0.5:
                    flip_c(destination[dst_ix])
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode
