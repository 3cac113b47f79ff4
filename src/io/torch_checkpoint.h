// PyTorch checkpoints as torch.save writes them since 1.6 (a zip archive), read without running any pickle
// code: the archive is parsed here, data.pkl goes through a restricted unpickler that knows only what a
// state dict of tensors needs, and every tensor is a memory-mapped view of its storage record.
//
// The format, as torch/serialization.py (_save) and caffe2/serialize/inline_container.cc write it:
//  - A zip archive whose entries all sit under one folder, "<archive>/" (the file's stem or "archive"):
//    data.pkl (the pickle), data/<key> (one record per storage: its raw bytes, little-endian), version,
//    and optionally byteorder ("little" or "big"; absent means little), .data/serialization_id, ...
//    Records are "stored" (method 0, never compressed), and PyTorchStreamWriter pads each local header's
//    extra field so the data starts on a 64-byte boundary; archives over 4 GB use ZIP64 fields. The
//    central directory is authoritative: local headers may carry zero sizes (a data descriptor follows).
//  - data.pkl is pickle protocol 2 (torch's DEFAULT_PROTOCOL; 4/5 opcodes are accepted too). A state dict
//    is `collections.OrderedDict` (GLOBAL, EMPTY_TUPLE, REDUCE, then SETITEMS; a BUILD with its _metadata
//    dict, ignored), each value
//      torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
//                                      backward_hooks[, metadata])
//    (or wrapped in torch._utils._rebuild_parameter[_with_state](data, requires_grad, hooks[, state])),
//    where `storage` is a persistent id (BINPERSID) of the tuple
//      ('storage', torch.<Type>Storage, key, location, numel)
//    naming the record data/<key> of `numel` elements of the storage's type. storage_offset, size and
//    stride are in elements.
//
// What is accepted: only the opcodes such a pickle uses and only the globals collections.OrderedDict,
// torch._utils._rebuild_tensor_v2 / _rebuild_parameter / _rebuild_parameter_with_state and torch.<Type>Storage.
// Anything else (os.system, builtins.eval, an unknown opcode, ...) is an error naming it, before anything
// is called: nothing is ever called, the unpickler only builds a description of the tensors. Tensors must be
// contiguous and lie inside their storage record, every zip offset and size inside the file; a compressed
// or encrypted record, a big-endian archive or a legacy (pre-1.6, non-zip) file is an error naming it.
// Storages of type Float, Half, BFloat16, Double, Long, Int and Byte are read (as F32, F16, BF16, F64, I64,
// I32, U8); a tensor of another type (Bool, Char, Short, complex, quantized) is an error naming it.
//
// Tensors are named by their keys; a dict nested in the top-level dict ({"state_dict": {...}}) gives names
// joined with ".". Values that are not tensors (an epoch number) are skipped.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/error.h"
#include "io/safetensors.h"

namespace meshdit {

// The first bytes of a file: a zip archive (what torch.save writes), or torch's legacy pickle format.
bool is_zip_file(const uint8_t* bytes, uint64_t size);
bool is_legacy_torch_file(const uint8_t* bytes, uint64_t size);

// Parses and validates a whole file image. The result lists the tensors whose names start with `prefix`
// (those only; the prefix is removed from their names), each at absolute byte offsets [begin, end) of the
// file (data_offset 0); tensors sharing a storage have overlapping spans. `what` names the file in messages.
Result<SafetensorsHeader> parse_torch_checkpoint(const uint8_t* bytes, uint64_t size, const std::string& what,
                                                 const std::string& prefix = "");

// Maps and parses a file; tensors are views into the mapping, as SafetensorsFile::open gives them.
Result<std::shared_ptr<SafetensorsFile>> open_torch_checkpoint(const std::string& path, const std::string& prefix = "");

}  // namespace meshdit
