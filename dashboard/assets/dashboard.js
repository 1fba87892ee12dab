// Alcove dashboard: copy buttons, and the chat playground's streamed answers. Every page works
// without it (the chat form then waits for the whole answer); htmx does the other live parts.
document.addEventListener("click", (e) => {
  const b = e.target.closest("button[data-copy]");
  if (!b) return;
  const field = document.getElementById(b.dataset.copy);
  if (!field) return;
  navigator.clipboard.writeText(field.value).then(
    () => { b.textContent = "Copied"; },
    () => { field.select(); b.textContent = "Press Ctrl+C to copy"; },
  );
});

function bubble(log, role, text) {
  const p = document.createElement("p");
  p.className = role;
  const who = document.createElement("strong");
  who.textContent = role === "user" ? "You: " : "Assistant: ";
  const span = document.createElement("span");
  span.textContent = text;
  p.append(who, span);
  log.append(p);
  return span;
}

// The answer's tokens as the gateway streams them (server-sent events, OpenAI's chunk format).
document.addEventListener("submit", async (e) => {
  const form = e.target.closest("form[data-stream]");
  if (!form) return;
  e.preventDefault();
  const log = document.getElementById("log");
  const field = form.elements.message;
  const error = document.getElementById("message-error") || document.createElement("p");
  error.id = "message-error";
  error.className = "error";
  error.setAttribute("role", "alert");
  error.textContent = "";
  const text = field.value.trim();
  if (!text) {
    error.textContent = "Write a message first.";
    field.after(error);
    field.setAttribute("aria-invalid", "true");
    field.setAttribute("aria-describedby", "message-error");
    return;
  }
  field.removeAttribute("aria-invalid");
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  bubble(log, "user", text);
  const answer = bubble(log, "assistant", "");
  answer.setAttribute("aria-busy", "true");
  try {
    const res = await fetch(form.action, {
      method: "POST",
      headers: { accept: "text/event-stream" },
      body: new URLSearchParams(new FormData(form)),
    });
    if (!res.ok || !(res.headers.get("content-type") || "").includes("text/event-stream")) {
      let words = `The instance answered with status ${res.status}.`;
      try { words = (await res.json()).error.message || words; } catch (_) { /* not JSON */ }
      throw new Error(words);
    }
    field.value = "";
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const chunk = JSON.parse(line.slice(6));
          // Alcove adds where retrieved context came from to the first chunk.
          if (Array.isArray(chunk.sources) && chunk.sources.length) {
            const list = document.createElement("ul");
            list.className = "sources";
            list.setAttribute("aria-label", "Sources");
            for (const s of chunk.sources) {
              const li = document.createElement("li");
              li.textContent = `${s.knowledge_base}: ${s.document}`;
              list.append(li);
            }
            answer.parentElement.after(list);
          }
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            answer.textContent += delta.content;
            answer.dataset.chunks = String(Number(answer.dataset.chunks || 0) + 1);
          }
        }
      }
    }
    const id = res.headers.get("x-conversation");
    if (id) {
      form.elements.conversation.value = id;
      history.replaceState(null, "", `${location.pathname}?c=${encodeURIComponent(id)}`);
    }
    // It answered: a note from the page's load that it could not is out of date.
    document.getElementById("unavailable")?.remove();
    if (window.htmx) htmx.trigger("#conversations", "refresh");
  } catch (err) {
    answer.parentElement.remove();
    error.textContent = err.message;
    field.after(error);
  } finally {
    answer.removeAttribute("aria-busy");
    button.disabled = false;
  }
});
