/** GGUF metadata value types, numbered as in the GGUF spec. */
export const GgufValueType = {
  uint8: 0,
  int8: 1,
  uint16: 2,
  int16: 3,
  uint32: 4,
  int32: 5,
  float32: 6,
  bool: 7,
  string: 8,
  array: 9,
  uint64: 10,
  int64: 11,
  float64: 12
} as const

/** A GGUF metadata type that holds one value (anything but `array`). */
export type GgufScalarType = Exclude<keyof typeof GgufValueType, "array">

/** The JavaScript value a GGUF scalar type is written from. */
export type GgufScalarValue<T extends GgufScalarType> = T extends "uint64" | "int64" ? bigint
  : T extends "bool" ? boolean
  : T extends "string" ? string
  : number

/** A single GGUF metadata value. */
export type GgufScalar = {
  readonly [T in GgufScalarType]: { readonly type: T; readonly value: GgufScalarValue<T> }
}[GgufScalarType]

/** A GGUF metadata array; all items share one scalar type. */
export type GgufArray = {
  readonly [T in GgufScalarType]: {
    readonly type: "array"
    readonly itemType: T
    readonly items: ArrayLike<GgufScalarValue<T>>
  }
}[GgufScalarType]

/** A GGUF metadata value. */
export type GgufValue = GgufScalar | GgufArray

/** Constructors for GGUF metadata values. */
export const GgufValue = {
  uint8: (value: number): GgufValue => ({ type: "uint8", value }),
  int8: (value: number): GgufValue => ({ type: "int8", value }),
  uint16: (value: number): GgufValue => ({ type: "uint16", value }),
  int16: (value: number): GgufValue => ({ type: "int16", value }),
  uint32: (value: number): GgufValue => ({ type: "uint32", value }),
  int32: (value: number): GgufValue => ({ type: "int32", value }),
  uint64: (value: bigint): GgufValue => ({ type: "uint64", value }),
  int64: (value: bigint): GgufValue => ({ type: "int64", value }),
  float32: (value: number): GgufValue => ({ type: "float32", value }),
  float64: (value: number): GgufValue => ({ type: "float64", value }),
  bool: (value: boolean): GgufValue => ({ type: "bool", value }),
  string: (value: string): GgufValue => ({ type: "string", value }),
  array: <T extends GgufScalarType>(itemType: T, items: ArrayLike<GgufScalarValue<T>>): GgufValue =>
    ({ type: "array", itemType, items }) as GgufArray
}

/** ggml tensor element types this writer can lay out, numbered as in ggml. */
export const GgmlType = { F32: 0, F16: 1 } as const
export type GgmlType = keyof typeof GgmlType

const bytesPerElement: Record<GgmlType, number> = { F32: 4, F16: 2 }

/** A tensor to write; `data` is called once, when its bytes are due, so only one tensor is in memory at a time. */
export interface GgufTensor {
  readonly name: string
  /** ggml order: `shape[0]` is the innermost (contiguous) dimension. */
  readonly shape: ReadonlyArray<number>
  readonly type: GgmlType
  /** Little-endian element bytes, exactly `tensorByteLength(tensor)` long. */
  readonly data: () => Uint8Array
}

/** Everything a GGUF file holds. Tensor data is aligned to the `general.alignment` metadata value (32 when absent). */
export interface GgufFile {
  readonly metadata: ReadonlyArray<readonly [key: string, value: GgufValue]>
  readonly tensors: ReadonlyArray<GgufTensor>
}

const GGUF_MAGIC = 0x46554747 // "GGUF" read as a little-endian uint32
const GGUF_VERSION = 3
const DEFAULT_ALIGNMENT = 32

/** Growable little-endian byte buffer for the header, metadata and tensor infos. */
class ByteSink {
  private bytes = new Uint8Array(64 * 1024)
  private view = new DataView(this.bytes.buffer)
  private length = 0
  private static readonly utf8 = new TextEncoder()

  private reserve(extra: number): number {
    const offset = this.length
    if (offset + extra > this.bytes.length) {
      const grown = new Uint8Array(Math.max(this.bytes.length * 2, offset + extra))
      grown.set(this.bytes.subarray(0, offset))
      this.bytes = grown
      this.view = new DataView(grown.buffer)
    }
    this.length += extra
    return offset
  }

  // `reserve` may swap in a bigger buffer, so it must run before `this.view` / `this.bytes` are read.
  uint8(value: number) { const at = this.reserve(1); this.view.setUint8(at, value) }
  int8(value: number) { const at = this.reserve(1); this.view.setInt8(at, value) }
  uint16(value: number) { const at = this.reserve(2); this.view.setUint16(at, value, true) }
  int16(value: number) { const at = this.reserve(2); this.view.setInt16(at, value, true) }
  uint32(value: number) { const at = this.reserve(4); this.view.setUint32(at, value, true) }
  int32(value: number) { const at = this.reserve(4); this.view.setInt32(at, value, true) }
  uint64(value: bigint) { const at = this.reserve(8); this.view.setBigUint64(at, value, true) }
  int64(value: bigint) { const at = this.reserve(8); this.view.setBigInt64(at, value, true) }
  float32(value: number) { const at = this.reserve(4); this.view.setFloat32(at, value, true) }
  float64(value: number) { const at = this.reserve(8); this.view.setFloat64(at, value, true) }
  bool(value: boolean) { this.uint8(value ? 1 : 0) }

  string(value: string) {
    const encoded = ByteSink.utf8.encode(value)
    this.uint64(BigInt(encoded.length))
    const at = this.reserve(encoded.length)
    this.bytes.set(encoded, at)
  }

  zeros(count: number) {
    const at = this.reserve(count)
    this.bytes.fill(0, at, at + count)
  }

  get size(): number { return this.length }

  contents(): Uint8Array { return this.bytes.subarray(0, this.length) }
}

const writeScalar = (sink: ByteSink, type: GgufScalarType, value: GgufScalarValue<GgufScalarType>): void => {
  switch (type) {
    case "uint8": return sink.uint8(value as number)
    case "int8": return sink.int8(value as number)
    case "uint16": return sink.uint16(value as number)
    case "int16": return sink.int16(value as number)
    case "uint32": return sink.uint32(value as number)
    case "int32": return sink.int32(value as number)
    case "uint64": return sink.uint64(value as bigint)
    case "int64": return sink.int64(value as bigint)
    case "float32": return sink.float32(value as number)
    case "float64": return sink.float64(value as number)
    case "bool": return sink.bool(value as boolean)
    case "string": return sink.string(value as string)
  }
}

const writeValue = (sink: ByteSink, value: GgufValue): void => {
  sink.uint32(GgufValueType[value.type])
  if (value.type === "array") {
    sink.uint32(GgufValueType[value.itemType])
    sink.uint64(BigInt(value.items.length))
    for (let i = 0; i < value.items.length; i++) writeScalar(sink, value.itemType, value.items[i]!)
  } else {
    writeScalar(sink, value.type, value.value)
  }
}

const alignmentOf = (file: GgufFile): number => {
  const entry = file.metadata.find(([key]) => key === "general.alignment")
  if (entry === undefined) return DEFAULT_ALIGNMENT
  const [, value] = entry
  if (value.type !== "uint32" || value.value <= 0 || value.value % 8 !== 0) {
    throw new Error(`general.alignment must be a positive uint32 multiple of 8, got ${JSON.stringify(value)}`)
  }
  return value.value
}

const paddingTo = (offset: number, alignment: number): number => (alignment - (offset % alignment)) % alignment

/** Element count of a tensor. */
export const tensorElementCount = (tensor: Pick<GgufTensor, "shape">): number =>
  tensor.shape.reduce((product, dimension) => product * dimension, 1)

/** Bytes of a tensor's data, before alignment padding. */
export const tensorByteLength = (tensor: Pick<GgufTensor, "shape" | "type">): number =>
  tensorElementCount(tensor) * bytesPerElement[tensor.type]

/** The header, metadata and tensor infos, padded so tensor data starts aligned. */
const encodePreamble = (file: GgufFile, alignment: number): Uint8Array => {
  const sink = new ByteSink()
  sink.uint32(GGUF_MAGIC)
  sink.uint32(GGUF_VERSION)
  sink.uint64(BigInt(file.tensors.length))
  sink.uint64(BigInt(file.metadata.length))
  for (const [key, value] of file.metadata) {
    sink.string(key)
    writeValue(sink, value)
  }
  let dataOffset = 0
  for (const tensor of file.tensors) {
    sink.string(tensor.name)
    sink.uint32(tensor.shape.length)
    for (const dimension of tensor.shape) sink.uint64(BigInt(dimension))
    sink.uint32(GgmlType[tensor.type])
    sink.uint64(BigInt(dataOffset))
    const byteLength = tensorByteLength(tensor)
    dataOffset += byteLength + paddingTo(byteLength, alignment)
  }
  sink.zeros(paddingTo(sink.size, alignment))
  return sink.contents()
}

/** Writes GGUF v3 files (little-endian) as a sequence of byte chunks. */
export const GgufWriter = {
  /** The file's bytes in order: the preamble, then each tensor's data and its padding, produced lazily. */
  chunks: function*(file: GgufFile): Generator<Uint8Array, void, undefined> {
    const alignment = alignmentOf(file)
    yield encodePreamble(file, alignment)
    for (const tensor of file.tensors) {
      const data = tensor.data()
      const expected = tensorByteLength(tensor)
      if (data.byteLength !== expected) {
        throw new Error(`tensor ${tensor.name}: expected ${expected} bytes of data, got ${data.byteLength}`)
      }
      yield data
      const padding = paddingTo(expected, alignment)
      if (padding > 0) yield new Uint8Array(padding)
    }
  },

  /** Size of the file in bytes, computed without producing tensor data. */
  byteLength: (file: GgufFile): number => {
    const alignment = alignmentOf(file)
    return encodePreamble(file, alignment).byteLength + file.tensors.reduce((total, tensor) => {
      const byteLength = tensorByteLength(tensor)
      return total + byteLength + paddingTo(byteLength, alignment)
    }, 0)
  }
}
