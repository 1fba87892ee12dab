// Alcove dashboard: copy buttons. (Pages work without it; htmx does the live parts.)
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
