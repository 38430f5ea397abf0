// Weft's dashboard and playground: plain browser JavaScript, served as is (no build step).
// The API key lives in sessionStorage only, and is sent as `Authorization: Bearer` on every call: the event stream
// is read with fetch() streaming rather than EventSource, which cannot send headers.
"use strict"

const keyName = "weft.apiKey"
const maxPoints = 600
const $ = (id) => document.getElementById(id)

const apiKey = () => sessionStorage.getItem(keyName) ?? ""
const authHeaders = () => (apiKey() === "" ? {} : { authorization: `Bearer ${apiKey()}` })

const text = (value) => (value === null || value === undefined ? "–" : String(value))
const round = (value) => (value === null || value === undefined ? null : Math.round(value * 10) / 10)
const cell = (value, className) => {
  const td = document.createElement("td")
  td.textContent = text(value)
  if (className) td.className = className
  return td
}
const row = (cells, attributes = {}) => {
  const tr = document.createElement("tr")
  for (const [name, value] of Object.entries(attributes)) tr.setAttribute(name, value)
  tr.append(...cells)
  return tr
}
const item = (content, className) => {
  const li = document.createElement("li")
  li.textContent = content
  if (className) li.className = className
  return li
}

// ---- key handling ----

const askForKey = (why) => {
  $("key-form").hidden = false
  $("connection").textContent = why
  $("connection").className = "badge down"
  $("admin-key").focus()
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault()
  sessionStorage.setItem(keyName, $("admin-key").value.trim())
  $("admin-key").value = ""
  $("key-form").hidden = true
  $("forget-key").hidden = false
  reconnect()
  loadModels()
})
$("forget-key").hidden = apiKey() === ""
$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(keyName)
  location.reload()
})

// ---- tabs ----

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll(".tab")) other.classList.toggle("active", other === tab)
    $("dashboard").hidden = tab.dataset.tab !== "dashboard"
    $("playground").hidden = tab.dataset.tab !== "playground"
    if (tab.dataset.tab === "playground") loadModels()
  })
}

// ---- charts ----

const lineChart = (canvas, series) =>
  new Chart(canvas, {
    type: "line",
    data: {
      labels: [],
      datasets: series.map(([label, color]) => ({ label, data: [], borderColor: color, backgroundColor: color, pointRadius: 0, borderWidth: 2, spanGaps: true }))
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: { x: { ticks: { maxTicksLimit: 6, color: "#8a94a3" } }, y: { beginAtZero: true, ticks: { color: "#8a94a3" } } },
      plugins: { legend: { labels: { color: "#e6e6e6", boxWidth: 12 } } }
    }
  })

const charts = {
  throughput: lineChart($("chart-throughput"), [["generated tokens/s", "#4fa3ff"]]),
  ttft: lineChart($("chart-ttft"), [["p50", "#3fb950"], ["p95", "#d29922"]]),
  itl: lineChart($("chart-itl"), [["p50", "#3fb950"], ["p95", "#d29922"]])
}
// Read by the browser tests.
window.weftCharts = charts

const chartValues = (point) => ({
  throughput: [round(point.tokensPerSecond)],
  ttft: [round(point.ttftP50Ms), round(point.ttftP95Ms)],
  itl: [round(point.interTokenP50Ms), round(point.interTokenP95Ms)]
})

const addPoints = (points) => {
  for (const point of points) {
    const label = new Date(point.at).toLocaleTimeString()
    const values = chartValues(point)
    for (const [name, chart] of Object.entries(charts)) {
      chart.data.labels.push(label)
      values[name].forEach((value, index) => chart.data.datasets[index].data.push(value))
      if (chart.data.labels.length > maxPoints) {
        chart.data.labels.shift()
        for (const dataset of chart.data.datasets) dataset.data.shift()
      }
    }
  }
  for (const chart of Object.values(charts)) chart.update("none")
}

// ---- snapshot rendering ----

const renderModels = (models) => {
  $("models").replaceChildren(...models.map((model) => item(`${model.id ?? "(loading)"} — ${model.state}${model.message ? `: ${model.message}` : ""}`, `model-${model.state}`)))
}

const renderQueue = (models) => {
  const totals = { high: 0, normal: 0, low: 0 }
  let limit = 0
  for (const model of models) {
    if (!model.queue) continue
    for (const priority of Object.keys(totals)) totals[priority] += model.queue.byPriority[priority]
    limit += model.stats.requests.queueLimit
  }
  const queued = totals.high + totals.normal + totals.low
  const lines = [item(`${queued} queued of ${limit}`), ...Object.entries(totals).map(([priority, count]) => item(`${priority}: ${count}`, "muted"))]
  const list = document.createElement("ul")
  list.append(...lines)
  $("queue").replaceChildren(list)
}

const renderKv = (models) => {
  const stats = models.filter((model) => model.stats).map((model) => model.stats.kvCache)
  const tokens = stats.reduce((sum, one) => sum + one.tokens, 0)
  const capacity = stats.reduce((sum, one) => sum + one.capacityTokens, 0)
  const cached = stats.reduce((sum, one) => sum + one.cachedTokens, 0)
  const ratio = capacity === 0 ? 0 : tokens / capacity
  const bar = document.createElement("div")
  bar.className = "bar"
  const fill = document.createElement("div")
  fill.style.width = `${Math.min(100, ratio * 100).toFixed(1)}%`
  bar.append(fill)
  const label = document.createElement("div")
  label.id = "kv-label"
  label.textContent = `${tokens} / ${capacity} tokens (${(ratio * 100).toFixed(1)}%), ${cached} cached`
  $("kv").replaceChildren(label, bar)
}

const renderSlots = (models) => {
  const rows = models.flatMap((model) =>
    (model.slots ?? []).map((slot) =>
      row(
        [cell(models.length > 1 ? `${model.id}#${slot.slot}` : slot.slot), cell(slot.state, `state-${slot.state}`), cell(slot.requestId), cell(slot.tokens), cell(slot.completionTokens)],
        { "data-slot": String(slot.slot), "data-state": slot.state }
      )
    )
  )
  $("slots").tBodies[0].replaceChildren(...rows)
}

const renderRecent = (models) => {
  const recent = models.flatMap((model) => model.recent ?? []).slice(0, 20)
  $("recent").tBodies[0].replaceChildren(
    ...recent.map((request) =>
      row(
        [
          // The generation id, as the slots table shows it; the HTTP request id (x-request-id) on hover.
          Object.assign(cell(request.generationId), { title: `x-request-id: ${text(request.requestId)}` }),
          cell(request.status, `status-${request.status}`),
          cell(request.finishReason),
          cell(request.promptTokens),
          cell(request.completionTokens),
          cell(request.queueMs),
          cell(request.ttftMs),
          cell(request.totalMs)
        ],
        { "data-status": String(request.status) }
      )
    )
  )
}

const renderAlerts = (alerts) => {
  const shown = alerts.filter((alert) => alert.status !== "resolved").concat(alerts.filter((alert) => alert.status === "resolved").slice(0, 5))
  $("alerts").replaceChildren(
    ...(shown.length === 0
      ? [item("none", "muted")]
      : shown.map((alert) => item(`${alert.status.toUpperCase()} ${alert.alert} (${alert.severity}): ${alert.summary}`, `alert-${alert.status === "resolved" ? "resolved muted" : alert.severity}`)))
  )
}

const onEvent = (name, data) => {
  if (name === "history") addPoints(data.points)
  if (name !== "snapshot") return
  const models = data.sample.models
  renderModels(models)
  renderQueue(models)
  renderKv(models)
  renderSlots(models)
  renderRecent(models)
  renderAlerts(data.alerts)
  addPoints([data.point])
}

// ---- the event stream ----

/** Reads a server-sent event stream to its end, calling `onFrame(eventName, dataText)` for each frame with data. */
const readEvents = async (response, onFrame) => {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader()
  let buffer = ""
  while (true) {
    const { done, value } = await reader.read()
    if (done) return
    buffer += value
    let end
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const frame = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      let name = "message"
      let data = ""
      for (const line of frame.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7)
        else if (line.startsWith("data: ")) data += line.slice(6)
      }
      if (data !== "") onFrame(name, data)
    }
  }
}

let stream = undefined

/** Reads `/admin/events` with fetch() streaming, so the key travels in a header; reconnects when it ends. */
const connect = async () => {
  const controller = new AbortController()
  stream = controller
  try {
    const response = await fetch("/admin/events", { headers: authHeaders(), cache: "no-store", signal: controller.signal })
    if (response.status === 401 || response.status === 403) {
      askForKey(response.status === 401 ? "needs a key" : "key lacks the admin scope")
      return
    }
    if (!response.ok || response.body === null) throw new Error(`HTTP ${response.status}`)
    $("connection").textContent = "live"
    $("connection").className = "badge live"
    await readEvents(response, (name, data) => onEvent(name, JSON.parse(data)))
  } catch (error) {
    if (controller.signal.aborted) return
  }
  if (stream !== controller) return
  $("connection").textContent = "reconnecting…"
  $("connection").className = "badge down"
  setTimeout(connect, 2000)
}

const reconnect = () => {
  stream?.abort()
  connect()
}

// ---- playground ----

let modelsLoaded = false

const loadModels = async () => {
  if (modelsLoaded) return
  const response = await fetch("/v1/models", { headers: authHeaders() })
  if (response.status === 401 || response.status === 403) return askForKey("the playground needs a key with the inference scope")
  if (!response.ok) return
  const body = await response.json()
  const select = $("pg-model")
  select.replaceChildren(
    ...body.data.map((model) => {
      const option = document.createElement("option")
      option.value = model.id
      option.textContent = model.id
      return option
    })
  )
  // Adapters, where the server lists any for a model, are offered too.
  const adapters = body.data.flatMap((model) => model.adapters ?? [])
  $("pg-adapter-label").hidden = adapters.length === 0
  $("pg-adapter").append(
    ...adapters.map((adapter) => {
      const option = document.createElement("option")
      option.value = typeof adapter === "string" ? adapter : adapter.id
      option.textContent = option.value
      return option
    })
  )
  modelsLoaded = true
}

let generation = undefined

$("pg-stop").addEventListener("click", () => generation?.abort())

$("pg-form").addEventListener("submit", async (event) => {
  event.preventDefault()
  const output = $("pg-output")
  output.textContent = ""
  delete output.dataset.done
  $("pg-error").hidden = true
  $("pg-usage").textContent = "–"
  $("pg-timings").textContent = "–"
  const messages = []
  if ($("pg-system").value.trim() !== "") messages.push({ role: "system", content: $("pg-system").value })
  messages.push({ role: "user", content: $("pg-prompt").value })
  const adapter = $("pg-adapter").value
  const body = {
    model: $("pg-model").value,
    messages,
    temperature: Number($("pg-temperature").value),
    max_tokens: Number($("pg-max-tokens").value),
    stream: true,
    stream_options: { include_usage: true },
    ...(adapter === "" ? {} : { adapter })
  }
  const controller = new AbortController()
  generation = controller
  $("pg-send").disabled = true
  $("pg-stop").disabled = false
  const started = performance.now()
  let firstToken = undefined
  let usage = undefined
  let finishReason = undefined
  const fail = (message) => {
    $("pg-error").textContent = message
    $("pg-error").hidden = false
  }
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
      signal: controller.signal
    })
    if (!response.ok) {
      const error = await response.json().catch(() => ({}))
      fail(`${response.status}: ${error.error?.message ?? response.statusText}`)
      return
    }
    await readEvents(response, (_name, data) => {
      if (data === "[DONE]") return
      const chunk = JSON.parse(data)
      if (chunk.error) fail(chunk.error.message)
      if (chunk.usage) usage = chunk.usage
      const choice = chunk.choices?.[0]
      if (choice?.finish_reason) finishReason = choice.finish_reason
      const content = choice?.delta?.content
      if (content) {
        firstToken ??= performance.now()
        output.textContent += content
      }
    })
  } catch (error) {
    if (!controller.signal.aborted) fail(String(error))
  } finally {
    const ended = performance.now()
    const total = ended - started
    if (usage) {
      $("pg-usage").textContent = `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion = ${usage.total_tokens} tokens`
    }
    const decodeMs = firstToken === undefined ? 0 : ended - firstToken
    const rate = usage && decodeMs > 0 ? ` · ${(usage.completion_tokens / (decodeMs / 1000)).toFixed(1)} tokens/s` : ""
    $("pg-timings").textContent =
      `first token ${firstToken === undefined ? "–" : `${Math.round(firstToken - started)} ms`} · total ${Math.round(total)} ms${rate}` +
      (finishReason ? ` · finish: ${finishReason}` : "")
    $("pg-output").dataset.done = "true"
    $("pg-send").disabled = false
    $("pg-stop").disabled = true
  }
})

connect()
