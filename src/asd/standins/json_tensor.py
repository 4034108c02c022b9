"""A ``:predict`` request's JSON as input tensors, checked as TF Serving checks it.

TF Serving's REST API turns the request body into tensors in
``tensorflow_serving/util/json_tensor.cc`` (``FillPredictRequestFromJson``): the
body must be a JSON object; ``signature_name`` a string; exactly one of
``instances`` (row format: a non-empty list, one element per row, all of one shape)
or ``inputs`` (columnar format); every value a dense nest of lists (no ragged
lists) of the input's type (a JSON number for a float input, never a string or a
boolean, and no wider than the type holds). A request that breaks a rule is refused
with ``INVALID_ARGUMENT`` (HTTP 400) and that file's message, which this module
repeats word for word where it can (JSON parser messages are Python's, not
rapidjson's).

Numbers go through numpy when the nest is regular (fast, as a 2 MB waveform needs);
anything numpy cannot read as a dense numeric array is walked value by value as
``json_tensor.cc`` walks it, to find the value it refuses and say so.
"""

from __future__ import annotations

import base64
import binascii
import json
import math

import numpy as np
import orjson

from .repository import RequestError

# DataTypeString (tensorflow/core/framework/types.cc) of the dtypes a signature input
# can have, as TF Serving's type errors name them.
_TYPE_NAMES = {"float32": "float", "float64": "double", "float16": "half"}
# the largest integer each float type holds exactly: 2**digits - 1 (IsLosslessDecimal)
_FLOAT_EXACT_INT = {"float32": 2**24 - 1, "float64": 2**53 - 1}
_INT_RANGES = {  # rapidjson's IsInt / IsInt64 / IsUint / IsUint64, as AddValueToTensor asks
    "int8": (-(2**31), 2**31 - 1), "int16": (-(2**31), 2**31 - 1), "int32": (-(2**31), 2**31 - 1),
    "uint8": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1), "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}


def _invalid(message: str) -> RequestError:
    return RequestError("INVALID_ARGUMENT", message)


def parse_body(data: bytes) -> dict:
    """The request body as a JSON object, as ``ParseJson`` (json_tensor.cc) reads it.

    ``NaN``, ``Infinity`` and ``-Infinity`` are accepted (rapidjson's
    ``kParseNanAndInfFlag``): orjson refuses them, so such a body is read again by the
    standard library.

    Raises
    ------
    RequestError
        INVALID_ARGUMENT: ``JSON Parse error: The document is empty``, ``JSON Parse
        error: <reason> at offset: <n>``, or ``JSON Value: <body> Is not object``.
    """
    if not data:
        raise _invalid("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            doc = json.loads(data)
        except json.JSONDecodeError as exc:
            raise _invalid(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
        except UnicodeDecodeError as exc:
            raise _invalid(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from None
    if not isinstance(doc, dict):
        raise _invalid(f"JSON Value: {_json_text(doc)} Is not object")
    return doc


def signature_name(doc: dict) -> str:
    """The request's ``signature_name`` ("" when absent: the default signature).

    Raises
    ------
    RequestError
        INVALID_ARGUMENT if it is not a string (json_tensor.cc ``FormatSignatureError``).
    """
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise _invalid(f"JSON Value: {_json_text(doc)} not formatted correctly. "
                       "'signature_name' key must be a string value.")
    return name


def predict_inputs(doc: dict, input_dtypes: dict[str, np.dtype | None],
                   may_hold_booleans: bool = True) -> tuple[dict[str, np.ndarray], bool]:
    """The input tensors of a ``:predict`` body (``FillPredictRequestFromJson``).

    Parameters
    ----------
    doc : dict
        The parsed body (:func:`parse_body`).
    input_dtypes : dict of str -> np.dtype or None
        The signature's inputs and their dtypes (None for a string input).
    may_hold_booleans : bool
        False when the raw body holds no ``true``/``false`` token: numpy would read a
        boolean in a list of numbers as 1.0 or 0.0, where TF Serving refuses it, so
        only a body without them may take the fast numpy path for mixed lists.

    Returns
    -------
    inputs : dict of str -> np.ndarray
        One array per input named in the request, of the input's dtype (strings as an
        object array of bytes); row format: first axis = number of instances.
    row_format : bool
        True for ``instances`` (answer with ``predictions``), False for ``inputs``
        (answer with ``outputs``).

    Raises
    ------
    RequestError
        INVALID_ARGUMENT with json_tensor.cc's message for a body it refuses.
    """
    if not input_dtypes:
        raise _invalid(f"Failed to get input map for signature: {doc.get('signature_name') or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise _invalid(f"JSON Value: {_json_text(doc)} Not formatted correctly expecting only one of 'inputs' or "
                       "'instances' keys to exist ")
    input_dtypes = {k: None if v is None else np.dtype(v) for k, v in input_dtypes.items()}
    converter = _Converter(may_hold_booleans)
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _invalid(f"JSON Value: {_json_text(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise _invalid(f"JSON Value: {_json_text(doc)} No values in 'instances' array")
        return converter.instances(instances, input_dtypes), True
    if has_inputs:
        return converter.inputs(doc["inputs"], input_dtypes), False
    raise _invalid("Missing 'inputs' or 'instances' key")


class _Converter:
    """JSON values -> arrays, fast through numpy, exact (json_tensor.cc's checks) when
    numpy cannot read them."""

    def __init__(self, may_hold_booleans: bool):
        self.may_hold_booleans = may_hold_booleans

    # -- formats ------------------------------------------------------------------

    def inputs(self, value, dtypes: dict) -> dict[str, np.ndarray]:
        """``FillTensorMapFromInputsMap``: one value, or an object naming each input
        (keys the signature lacks are ignored, as TF Serving ignores them)."""
        if not isinstance(value, dict) or _is_base64(value):
            if len(dtypes) > 1:
                raise _invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                               "required as per tensorinfo_map")
            name = next(iter(dtypes))
            return {name: self.tensor(value, dtypes[name])}
        tensors = {}
        for name in sorted(dtypes):
            if name not in value:
                raise _invalid(f"Missing named input: {name} in 'inputs' object.")
            tensors[name] = self.tensor(value[name], dtypes[name])
        return tensors

    def instances(self, rows: list, dtypes: dict) -> dict[str, np.ndarray]:
        """``FillTensorMapFromInstancesList``: a plain list (one input) or a list of
        objects naming every input; every row of one shape."""
        if not isinstance(rows[0], dict) and len(dtypes) > 1:
            raise _invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                           "required as per tensorinfo_map")
        names = set(dtypes)
        as_objects = _is_element_object(rows[0])
        if as_objects:
            if all(_is_element_object(row) and set(row) == names for row in rows):
                fast = {name: self._fast([row[name] for row in rows], dtypes[name]) for name in names}
                if all(v is not None for v in fast.values()):
                    return fast
        elif not any(_is_element_object(row) for row in rows):
            name = next(iter(dtypes))
            fast = self._fast(rows, dtypes[name])
            if fast is not None:
                return {name: fast}
        return self._instances_exact(rows, dtypes, as_objects)

    def _instances_exact(self, rows: list, dtypes: dict, as_objects: bool) -> dict[str, np.ndarray]:
        names = sorted(dtypes)
        leaves: dict[str, list] = {}
        shapes: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            if as_objects:
                if not _is_element_object(row):
                    raise _invalid(f"Expecting object but got list at item {index} of input list")
                for key, item in row.items():
                    try:
                        self._add_instance_item(item, key, dtypes, leaves, shapes)
                    except RequestError as exc:
                        raise _invalid(f"Failed to process element: {index} key: {key} of 'instances' list. "
                                       f"Error: INVALID_ARGUMENT: {exc.message}") from None
                if set(row) != set(names):
                    raise _invalid(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                   f"{_json_text(row)} keys must be equal to: {','.join(names)}")
            else:
                if _is_element_object(row):
                    raise _invalid(f"Expecting value/list but got object at item {index} of input list")
                try:
                    self._add_instance_item(row, names[0], dtypes, leaves, shapes)
                except RequestError as exc:
                    raise _invalid(f"Failed to process element: {index} of 'instances' list. "
                                   f"Error: INVALID_ARGUMENT: {exc.message}") from None
        return {name: _array(leaves[name], [len(rows), *shapes[name]], dtypes[name]) for name in leaves}

    def _add_instance_item(self, item, name: str, dtypes: dict, leaves: dict, shapes: dict) -> None:
        """``AddInstanceItem``: one row's value of one input, its shape the first row's."""
        if name not in dtypes:
            raise _invalid(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        values: list = []
        _fill(item, 0, shape, dtypes[name], values)
        if name not in shapes:
            shapes[name], leaves[name] = shape, values
            return
        expected = math.prod(shapes[name])
        if expected != len(values):
            raise _invalid(f"Expecting tensor size: {expected} but got: {len(values)}")
        if shape != shapes[name]:
            raise _invalid(f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(shape)}")
        leaves[name].extend(values)

    # -- one value ----------------------------------------------------------------

    def tensor(self, value, dtype: np.dtype | None) -> np.ndarray:
        """One input's value as an array (``GetDenseTensorShape`` + ``FillTensorProto``)."""
        fast = self._fast(value, dtype)
        if fast is not None:
            return fast
        shape = _dense_shape(value)
        values: list = []
        _fill(value, 0, shape, dtype, values)
        return _array(values, shape, dtype)

    def _fast(self, value, dtype: np.dtype | None) -> np.ndarray | None:
        """numpy's reading of a regular numeric nest, or None if it needs the exact walk
        (strings, booleans, objects, ragged lists, values the type cannot hold)."""
        if dtype is None:
            return None
        try:
            array = np.asarray(value)  # no dtype: strings, booleans and ragged lists stay visible
        except (ValueError, TypeError, OverflowError):
            return None
        kind, name = array.dtype.kind, dtype.name
        if dtype.kind in "fiu" and self.may_hold_booleans:
            return None  # numpy reads [true, 2] as [1, 2]; TF Serving refuses the boolean
        if dtype.kind == "f":
            if kind not in "fiu":
                return None
            if kind in "iu" and array.size and np.abs(array).max() > _FLOAT_EXACT_INT.get(name, 0):
                return None
            with np.errstate(over="ignore"):
                converted = array.astype(dtype, copy=False)
            # a finite number beyond the type's range became infinite: lossy, the exact walk says which
            if kind == "f" and not np.isfinite(converted).all() and (np.isinf(converted) & np.isfinite(array)).any():
                return None
            return converted
        elif dtype.kind in "iu":
            low, high = _INT_RANGES.get(name, (0, -1))
            if kind not in "iu" or (array.size and (array.min() < low or array.max() > high)):
                return None
        elif dtype.kind == "b":
            if kind != "b":
                return None
        else:
            return None
        return array.astype(dtype, copy=False)


def _fill(value, level: int, shape: list[int], dtype: np.dtype | None, out: list) -> None:
    """``FillTensorProto``: every leaf at the tensor's rank, every list of the size the
    first one at its level has, every leaf of the input's type."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise _invalid(f"JSON Value: {_json_text(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                           f"Expected at level: {rank}")
        if isinstance(value, dict):
            if dtype is not None:
                raise _type_error(value, dtype)
            out.append(_decode_base64(value))
        else:
            out.append(_checked_leaf(value, dtype))
        return
    if level >= rank:
        raise _invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise _invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                       f"expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _checked_leaf(value, dtype: np.dtype | None):
    """``AddValueToTensor``: the leaf, if a value of ``dtype``."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype is None:  # DT_STRING
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    name = np.dtype(dtype).name
    if dtype.kind == "f":
        if not is_number:
            raise _type_error(value, dtype)
        if not _lossless(value, dtype):
            raise _invalid(f"Cannot convert JSON value: {_json_text(value)} to {_type_name(dtype)} "
                           "without loss of precision.")
        return value
    if dtype.kind in "iu":
        low, high = _INT_RANGES.get(name, (0, -1))
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            raise _type_error(value, dtype)
        return value
    if dtype.kind == "b":
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    raise RequestError("UNIMPLEMENTED", f"Conversion of JSON Value: {_json_text(value)} to type: {_type_name(dtype)}")


def _lossless(value, dtype: np.dtype) -> bool:
    """``IsLosslessDecimal``: non-finite values pass; an integer within the type's exact
    integers; a decimal within the type's range."""
    if isinstance(value, float) and not math.isfinite(value):
        return True
    name = np.dtype(dtype).name
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return abs(value) <= _FLOAT_EXACT_INT.get(name, 0)
    limit = float(np.finfo(dtype).max)
    return -limit <= float(value) <= limit


def _type_error(value, dtype: np.dtype | None) -> RequestError:
    return _invalid(f"JSON Value: {_json_text(value)} Type: {_json_type(value)} is not of expected type: "
                    f"{_type_name(dtype)}")


def _type_name(dtype: np.dtype | None) -> str:
    if dtype is None:
        return "string"
    name = np.dtype(dtype).name
    return _TYPE_NAMES.get(name, name)


def _json_type(value) -> str:
    """``JsonTypeString``."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _json_text(value) -> str:
    """``JsonValueToString``: rapidjson's PrettyWriter (4-space indent); decimals as
    ``WriteDecimal`` writes them (six significant digits when that round-trips)."""
    if isinstance(value, float):
        return _decimal_text(value)
    return json.dumps(value, indent=4, ensure_ascii=False)


def _decimal_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    if float(text) != value:
        text = f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _dense_shape(value) -> list[int]:
    """``GetDenseTensorShape``: the sizes of the first list at each level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _is_base64(value) -> bool:
    """``IsValBase64Object``: ``{"b64": "<string>"}`` and nothing else."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_element_object(value) -> bool:
    return isinstance(value, dict) and not _is_base64(value)


def _decode_base64(value) -> bytes:
    if not _is_base64(value):
        raise _invalid(f"JSON Value: {_json_text(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("Unable to base64 decode") from None


def _array(values: list, shape: list[int], dtype: np.dtype | None) -> np.ndarray:
    if dtype is None:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)
