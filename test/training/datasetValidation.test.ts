import { Effect } from "effect"
import { parquetWriteFile } from "hyparquet-writer"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { formatLocation } from "../../src/training/datasets/DatasetRecord.js"
import { type ValidateOptions, validateDataset } from "../../src/training/datasets/DatasetValidator.js"
import { loadExampleTokenizer } from "../../src/training/ExampleTokenizer.js"
import { tinyModelPath } from "../support/tinyModel.js"
import { runWeftInProcess } from "../support/weftCli.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "weft-datasets-"))

const write = (name: string, text: string): string => {
  const file = path.join(dir, name)
  fs.writeFileSync(file, text)
  return file
}

const jsonl = (...records: ReadonlyArray<unknown>): string => records.map((record) => typeof record === "string" ? record : JSON.stringify(record)).join("\n") + "\n"

const validate = (file: string, options: ValidateOptions = { format: "auto" }) => Effect.runPromise(validateDataset(file, options))

/** Each problem as `location field` for compact assertions. */
const where = (report: { problems: ReadonlyArray<{ location: Parameters<typeof formatLocation>[0]; field: string }> }) =>
  report.problems.map((problem) => `${formatLocation(problem.location)} ${problem.field}`)

const chat = (user: string, assistant: string) => ({ messages: [{ role: "user", content: user }, { role: "assistant", content: assistant }] })

describe("weft dataset validate", () => {
  it("chat JSONL: a good file passes; a broken one names each bad line and field, and a repeated record", async () => {
    const good = await validate(write("good.jsonl", jsonl(chat("a", "b"), chat("c", "d"))))
    expect(good).toMatchObject({ ok: true, format: "chat", records: 2, valid: 2, invalid: 0, problems: [] })

    const broken = await validate(write("broken-chat.jsonl", jsonl(
      chat("hi", "hello"),
      { messages: [{ role: "user", content: "hi" }, { role: "bot", content: "x" }] },
      "{not json",
      { messages: [{ role: "user", content: "only a question" }] },
      { messages: [{ role: "user", content: 3 }, { role: "assistant", content: "x" }] },
      { prompt: "p" },
      chat("hi", "hello")
    )))
    expect(broken.ok).toBe(false)
    expect(where(broken)).toEqual([
      "line 2 messages[1].role",
      "line 3 (record)",
      "line 4 messages",
      "line 5 messages[0].content",
      "line 6 messages"
    ])
    expect(broken.problems[0]!.message).toContain('"bot"')
    expect(broken.duplicates).toEqual([{ location: { unit: "line", index: 7 }, firstAt: { unit: "line", index: 1 } }])
    expect(broken).toMatchObject({ records: 7, valid: 2, invalid: 5 })
  })

  it("prompt/completion JSON array: items are numbered and the missing or mistyped field is named", async () => {
    const report = await validate(write("completion.json", JSON.stringify([
      { prompt: "2+2=", completion: "4" },
      { prompt: "3+3=" },
      { prompt: 7, completion: "x" },
      "just a string"
    ])))
    expect(report.format).toBe("completion")
    expect(where(report)).toEqual(["item 2 completion", "item 3 prompt", "item 4 (record)"])
    expect(report.problems[0]!.message).toBe("is missing")
  })

  it("instruction CSV: quoted cells with commas and newlines are one cell; a bad row is named with its start line", async () => {
    const file = write("instruction.csv", [
      "instruction,input,output",
      "\"Translate, please\",\"line one",
      "line two\",Bonjour",
      "Summarize,,",
      "\"Count\",\"1,2,3\",\"three",
      "numbers\""
    ].join("\n") + "\n")
    const report = await validate(file)
    expect(report.format).toBe("instruction")
    expect(report.records).toBe(3)
    expect(report.examples[0]).toEqual({
      _tag: "Chat",
      messages: [{ role: "user", content: "Translate, please\n\nline one\nline two" }, { role: "assistant", content: "Bonjour" }]
    })
    expect(where(report)).toEqual(["row 2 (line 4) output"])
    expect(report.problems[0]!.message).toBe("is empty")
    expect(report.valid).toBe(2)
  })

  it("a CSV with a broken quote is unreadable, with the parser's reason", async () => {
    const failure = await Effect.runPromise(Effect.flip(validateDataset(write("broken.csv", "text\n\"unterminated\n"), { format: "auto" })))
    expect(failure._tag).toBe("DatasetUnreadable")
    expect(failure.message).toContain("broken.csv")
  })

  it("ShareGPT JSONL: unknown speakers and conversations without a gpt turn are named", async () => {
    const report = await validate(write("sharegpt.jsonl", jsonl(
      { conversations: [{ from: "human", value: "hi" }, { from: "gpt", value: "hello" }] },
      { conversations: [{ from: "human", value: "hi" }, { from: "robot", value: "beep" }] },
      { conversations: [{ from: "human", value: "hi" }] },
      { conversations: "hi" }
    )))
    expect(report.format).toBe("sharegpt")
    expect(report.examples[0]).toEqual({ _tag: "Chat", messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "hello" }] })
    expect(where(report)).toEqual(["line 2 conversations[1].from", "line 3 conversations", "line 4 conversations"])
  })

  it("text and completion Parquet: rows with a null or empty cell are named by row", async () => {
    const text = path.join(dir, "text.parquet")
    parquetWriteFile({ filename: text, columnData: [{ name: "text", data: ["one", null, "three", ""], type: "STRING", nullable: true }] })
    const textReport = await validate(text)
    expect(textReport).toMatchObject({ fileType: "parquet", format: "text", records: 4, valid: 2 })
    expect(where(textReport)).toEqual(["row 2 text", "row 4 text"])

    const completion = path.join(dir, "completion.parquet")
    parquetWriteFile({
      filename: completion,
      columnData: [
        { name: "prompt", data: ["a", "b", "c"], type: "STRING" },
        { name: "completion", data: ["x", null, "x"], type: "STRING", nullable: true }
      ]
    })
    const completionReport = await validate(completion, { format: "completion" })
    expect(where(completionReport)).toEqual(["row 2 completion"])
  })

  it("a forced format that does not match names the fields it lacks; an empty file fails", async () => {
    const report = await validate(write("text-as-chat.jsonl", jsonl({ text: "hello" })), { format: "chat" })
    expect(where(report)).toEqual(["line 1 messages"])
    const empty = await validate(write("empty.jsonl", "\n"))
    expect(empty.ok).toBe(false)
    expect(empty.problems[0]!.message).toContain("no records")
  })

  it("with a model, counts tokens through its chat template", async () => {
    const tokenizer = await Effect.runPromise(loadExampleTokenizer(await tinyModelPath()))
    const file = write("tokens.jsonl", jsonl(chat("hello there", "general kenobi"), { messages: [{ role: "user", content: "x" }, { role: "assistant", content: "y" }] }))
    const report = await validate(file, { format: "auto", tokens: { count: (example) => tokenizer.tokens(example).length, contextLength: tokenizer.contextLength } })
    const lengths = report.examples.map((example) => tokenizer.tokens(example).length)
    // ChatML around each turn: far more tokens than the words alone.
    expect(Math.min(...lengths)).toBeGreaterThan(10)
    expect(report.tokens).toMatchObject({ total: lengths[0]! + lengths[1]!, min: Math.min(...lengths), max: Math.max(...lengths), contextLength: 2048, overContext: 0 })
  })

  it("the CLI exits 0 on a good file and 1 on a bad one, and --json reports every problem", async () => {
    // In this process: the test is about the command's exit code and report, not about the process.
    const run = (args: ReadonlyArray<string>) => runWeftInProcess(["dataset", "validate", ...args])
    const good = await run([write("cli-good.jsonl", jsonl(chat("a", "b")))])
    expect(good.code).toBe(0)
    expect(good.stdout).toContain("OK")
    const bad = await run([write("cli-bad.jsonl", jsonl(chat("a", "b"), { messages: [] })), "--json"])
    expect(bad.code).toBe(1)
    const report = JSON.parse(bad.stdout) as { problems: Array<{ location: { unit: string; index: number }; field: string }> }
    expect(report.problems).toEqual([{ location: { unit: "line", index: 2 }, field: "messages", message: "is empty" }])
  }, 60_000)
})
