// Alcove dashboard: copy buttons, the chat playground's streamed answers, and top-ups by card. Every page works
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

// Top-up by card: Stripe.js (loaded by the billing page from Stripe) collects the card in its own
// field and turns it into a one-use token at Stripe; only the token comes to us. When the bank
// asks for 3-D Secure, Stripe.js finishes the payment in the page. The credit arrives through
// Stripe's webhook; after a payment the balance is fetched again until it shows.
(() => {
  const form = document.getElementById("top-up");
  if (!form || typeof window.Stripe !== "function") return;
  const stripe = window.Stripe(form.dataset.stripeKey);
  const card = stripe.elements().create("card");
  card.mount("#card-element");
  const status = document.getElementById("pay-status");
  const button = form.querySelector("button[type=submit]");
  const csrf = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["x-csrf-token"];

  // Every 2 s for up to 2 minutes, until the balance differs from what it was when paying.
  async function awaitCredit(was) {
    for (let i = 0; i < 60; i++) {
      await new Promise((r) => setTimeout(r, 2000));
      const box = document.getElementById("balance");
      try {
        const res = await fetch(box.dataset.refresh, { headers: { accept: "text/html" } });
        if (!res.ok) continue;
        box.outerHTML = await res.text();
      } catch (_) { continue; }
      if (document.getElementById("balance-amount").textContent !== was) return;
    }
  }

  function fieldError(name, words) {
    const anchor = name === "amount" ? form.elements.amount : document.getElementById("card-element");
    const id = `${name}-error`;
    let p = document.getElementById(id);
    if (!words) {
      if (p) p.remove();
      if (name === "amount") anchor.removeAttribute("aria-invalid");
      return;
    }
    if (!p) {
      p = document.createElement("p");
      p.id = id;
      p.className = "error";
      p.setAttribute("role", "alert");
      anchor.after(p);
    }
    p.textContent = words;
    if (name === "amount") {
      anchor.setAttribute("aria-invalid", "true");
      anchor.setAttribute("aria-describedby", `${id} amount-hint`);
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (button.disabled) return;
    fieldError("amount", "");
    fieldError("card", "");
    if (!form.elements.amount.value.trim()) {
      fieldError("amount", "Enter an amount.");
      return;
    }
    button.disabled = true;
    status.textContent = "Paying…";
    const was = document.getElementById("balance-amount").textContent;
    try {
      const made = await stripe.createToken(card);
      if (made.error || !made.token) {
        fieldError("card", (made.error && made.error.message) || "Stripe did not accept the card details.");
        status.textContent = "";
        return;
      }
      const body = new URLSearchParams({
        csrf,
        amount: form.elements.amount.value,
        nonce: form.elements.nonce.value,
        token: made.token.id,
      });
      const res = await fetch(form.action, { method: "POST", headers: { accept: "application/json" }, body });
      let reply = {};
      try { reply = await res.json(); } catch (_) { reply = { error: `The dashboard answered with status ${res.status}. Reload the page.`, field: "card" }; }
      if (reply.nonce) form.elements.nonce.value = reply.nonce;
      if (reply.error) {
        fieldError(reply.field === "amount" ? "amount" : "card", reply.error);
        status.textContent = "";
        return;
      }
      if (reply.status === "requires_action") {
        status.textContent = "Your bank asks you to confirm the payment…";
        const done = await stripe.confirmCardPayment(reply.client_secret);
        if (done.error) {
          fieldError("card", done.error.message || "The payment was not confirmed.");
          status.textContent = "";
          return;
        }
        status.textContent = "Payment received. Your credit appears above as soon as Stripe confirms it.";
      } else {
        status.textContent = reply.message || "Payment received.";
      }
      form.elements.amount.value = "";
      awaitCredit(was);
    } catch (err) {
      fieldError("card", "The payment could not be sent. Check your connection and try again.");
      status.textContent = "";
    } finally {
      button.disabled = false;
    }
  });
})();
