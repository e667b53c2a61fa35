// The playground: POST <portal>/v1/completions with the browser's session and CSRF token (no API key
// in the page), read the server-sent events as they arrive and show each piece of text at once,
// coloured by its probability, with the top alternatives on hover.
(function () {
  "use strict";
  const form = document.getElementById("playground");
  if (!form) return;
  const output = document.getElementById("pg-output");
  const status = document.getElementById("pg-status");
  const runButton = document.getElementById("pg-run");
  const stopButton = document.getElementById("pg-stop-run");
  const snippet = document.getElementById("pg-snippet");
  const api = form.dataset.api;
  let controller = null;

  function request() {
    const value = (name) => form.elements[name].value.trim();
    const body = { model: value("model"), prompt: form.elements.prompt.value, stream: true,
      stream_options: { include_usage: true }, logprobs: 3 };
    const numbers = { temperature: parseFloat, top_p: parseFloat, max_tokens: parseInt, seed: parseInt, n: parseInt };
    for (const [name, parse] of Object.entries(numbers)) {
      if (value(name) !== "") body[name] = parse(value(name), 10);
    }
    const stops = form.elements.stop.value.split("\n").filter((line) => line !== "");
    if (stops.length) body.stop = stops;
    return body;
  }

  // Green (likely) to red (unlikely) by probability.
  function colour(probability) {
    const hue = Math.round(120 * Math.max(0, Math.min(1, probability)));
    return `hsl(${hue}, 70%, 88%)`;
  }

  function describe(logprobs) {
    if (!logprobs || !logprobs.tokens || !logprobs.tokens.length) return null;
    const lines = logprobs.tokens.map((token, i) => {
      const lp = logprobs.token_logprobs[i];
      let line = `${JSON.stringify(token)}: p=${Math.exp(lp).toFixed(3)} (logprob ${lp.toFixed(3)})`;
      const top = (logprobs.top_logprobs || [])[i];
      if (top) {
        line += "\n  top: " + Object.entries(top).map(([t, l]) => `${JSON.stringify(t)} ${Math.exp(l).toFixed(3)}`).join(", ");
      }
      return line;
    });
    const lowest = Math.min(...logprobs.token_logprobs);
    return { title: lines.join("\n"), probability: Math.exp(lowest) };
  }

  function choiceBox(index) {
    let box = output.querySelector(`[data-choice="${index}"]`);
    if (!box) {
      box = document.createElement("div");
      box.className = "completion card";
      box.dataset.choice = String(index);
      const heading = document.createElement("h2");
      heading.textContent = `Completion ${index + 1}`;
      const text = document.createElement("p");
      text.className = "completion-text";
      text.style.whiteSpace = "pre-wrap";
      box.append(heading, text);
      output.append(box);
    }
    return box.querySelector(".completion-text");
  }

  function show(chunk) {
    for (const choice of chunk.choices || []) {
      if (!choice.text) continue;
      const span = document.createElement("span");
      span.className = "token";
      span.textContent = choice.text;
      const info = describe(choice.logprobs);
      if (info) {
        span.title = info.title;
        span.style.backgroundColor = colour(info.probability);
        span.dataset.probability = info.probability.toFixed(4);
      }
      choiceBox(choice.index || 0).append(span);
    }
  }

  async function run(event) {
    event.preventDefault();
    output.replaceChildren();
    status.textContent = "Generating…";
    runButton.disabled = true;
    stopButton.disabled = false;
    controller = new AbortController();
    try {
      const response = await fetch(`${api}/completions`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": form.elements.csrfmiddlewaretoken.value },
        body: JSON.stringify(request()),
        signal: controller.signal,
      });
      if (!response.ok) {
        const problem = await response.json().catch(() => null);
        status.textContent = problem && problem.error ? `Refused (${response.status}): ${problem.error.message}` : `Refused (${response.status}).`;
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let finished = false;
      while (!finished) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (!data) continue;
          if (data === "[DONE]") { finished = true; break; }
          const chunk = JSON.parse(data);
          if (chunk.error) { status.textContent = `Stopped: ${chunk.error.message}`; finished = true; break; }
          if (chunk.usage && (!chunk.choices || !chunk.choices.length)) {
            status.textContent = `Done: ${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} completion tokens.`;
          }
          show(chunk);
        }
      }
      if (status.textContent === "Generating…") status.textContent = "Done.";
    } catch (error) {
      status.textContent = error.name === "AbortError" ? "Stopped." : `Failed: ${error.message}`;
    } finally {
      runButton.disabled = false;
      stopButton.disabled = true;
      controller = null;
    }
  }

  function apiBody() {
    const body = request();
    delete body.stream_options;
    body.stream = false;
    return body;
  }

  function python() {
    const body = apiBody();
    const args = Object.entries(body).filter(([k]) => k !== "stream").map(([k, v]) => `    ${k}=${JSON.stringify(v).replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False").replace(/\bnull\b/g, "None")},`);
    return ["import os", "", "from openai import OpenAI", "",
      `client = OpenAI(base_url=${JSON.stringify(api)}, api_key=os.environ["ORP_API_KEY"])`,
      "completion = client.completions.create(", ...args, ")", "print(completion.choices[0].text)"].join("\n");
  }

  function curl() {
    const quoted = JSON.stringify(apiBody()).replace(/'/g, "'\\''");
    return [`curl ${api}/completions \\`, '  -H "Authorization: Bearer $ORP_API_KEY" \\',
      '  -H "Content-Type: application/json" \\', `  -d '${quoted}'`].join("\n");
  }

  async function copy(text) {
    snippet.textContent = text;
    snippet.hidden = false;
    try {
      await navigator.clipboard.writeText(text);
      status.textContent = "Copied. Replace $ORP_API_KEY with a key from your account page.";
    } catch (error) {
      status.textContent = "Select the snippet below and copy it. Replace $ORP_API_KEY with a key from your account page.";
    }
  }

  form.addEventListener("submit", run);
  stopButton.addEventListener("click", () => controller && controller.abort());
  document.getElementById("pg-copy-curl").addEventListener("click", () => copy(curl()));
  document.getElementById("pg-copy-python").addEventListener("click", () => copy(python()));
})();
