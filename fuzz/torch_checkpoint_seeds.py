#!/usr/bin/env python3
"""Writes fuzz/corpus/torch_checkpoint/: state dicts pickled by CPython's own pickle module exactly as
torch.save lays them out (stand-in torch classes carry the names torch pickles; nothing of torch is needed),
in zips written by the zipfile module. A seed's first byte picks the harness's mode: 0, a whole file; 1, a
data.pkl alone (the harness wraps it in a zip with storage records 0: 24 bytes, 1: 16 bytes, 2: 2 bytes).
Also a check of the reader against a real pickler: `meshdit convert` must read the whole-file seeds."""
import collections, io, os, pickle, struct, sys, types, zipfile

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, utils


def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
    raise RuntimeError("stand-in")


def _rebuild_parameter(*args):
    raise RuntimeError("stand-in")


for f in (_rebuild_tensor_v2, _rebuild_parameter):
    f.__module__ = "torch._utils"
    setattr(utils, f.__name__, f)
for name in ("FloatStorage", "BFloat16Storage", "HalfStorage", "LongStorage"):
    cls = type(name, (), {})
    cls.__module__ = "torch"
    setattr(torch, name, cls)


class Storage:
    def __init__(self, type_name, key, numel):
        self.type, self.key, self.numel = getattr(torch, type_name), key, numel


class Tensor:
    def __init__(self, storage, offset, size, stride, parameter=False):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
        self.parameter = parameter

    def __reduce_ex__(self, proto):
        t = (_rebuild_tensor_v2, self.args)
        if self.parameter:
            inner = Tensor.__new__(Tensor)
            inner.args, inner.parameter = self.args, False
            return (_rebuild_parameter, (inner, False, collections.OrderedDict()))
        return t


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.type, obj.key, "cpu", obj.numel)
        return None


def dumps(obj, protocol):
    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def state_dict():
    s0, s1, s2 = Storage("BFloat16Storage", "0", 12), Storage("FloatStorage", "1", 4), Storage("HalfStorage", "2", 1)
    d = collections.OrderedDict()
    d["dit.proj.weight"] = Tensor(s0, 0, [2, 3], [3, 1])
    d["dit.proj.bias"] = Tensor(s0, 6, [6], [1], parameter=True)
    d["dit.norm.weight"] = Tensor(s1, 0, [1, 4], [4, 1])
    d["dit.scale"] = Tensor(s1, 3, [], [])
    d["vae.w"] = Tensor(s2, 0, [1], [1])
    d._metadata = collections.OrderedDict([("", {"version": 1}), ("dit", {"version": 1})])
    return d


def zip_file(pkl, storages):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for key, data in storages:
            z.writestr("archive/data/" + key, data)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "torch_checkpoint")
    os.makedirs(out, exist_ok=True)
    storages = [("0", b"\x80\x3f" * 12), ("1", struct.pack("<4f", 1, 2, 3, 4)), ("2", b"\x00\x3c")]
    for proto in (2, 4):
        pkl = dumps(state_dict(), proto)
        whole = zip_file(pkl, storages)
        with open(os.path.join(out, f"state_dict_p{proto}.bin"), "wb") as f:
            f.write(b"\x00" + whole)
        with open(os.path.join(out, f"state_dict_p{proto}.pkl"), "wb") as f:
            f.write(b"\x01" + pkl)
        if len(sys.argv) > 1:  # also the plain checkpoint, for meshdit convert
            with open(os.path.join(sys.argv[1], f"state_dict_p{proto}.bin"), "wb") as f:
                f.write(whole)


if __name__ == "__main__":
    main()
