// One customer's journey through the dashboard in Debian's chromium (playwright-core drives it;
// no browser is ever downloaded). tests/dashboard_browser.rs starts the platform, runs this,
// and checks the cluster and the gateway against what it prints (one JSON line at the end).
//
// Environment: DASHBOARD_URL, MAILDIR (the SMTP server's maildir), OUT (screenshots), OWNER and
// OTHER (two tenants' owners), TENANT (the owner's tenant), INSTANCE (the name to create).
import { check, code as mailed, env, launch, phone, screenshots, sleep } from "./common.mjs";

const [url, maildir, out] = [env("DASHBOARD_URL"), env("MAILDIR"), env("OUT")];
const [owner, other, tenant, instance] = [env("OWNER"), env("OTHER"), env("TENANT"), env("INSTANCE")];
const code = (to, n) => mailed(maildir, to, n);
const screenshot = screenshots(out);
const browser = await launch();
const result = {};
try {
  // A phone-sized window: the pages must work there.
  const { context: me, page, problems } = await phone(browser);

  // 1. Sign in with the code from the mail.
  await page.goto(url);
  check(page.url().endsWith("/signin"), `signed out, / leads to the sign-in page: ${page.url()}`);
  await page.getByLabel("Email address").fill("not an address");
  await page.getByRole("button", { name: "Email me a code" }).click();
  check(await page.locator("#email-error").isVisible(), "a bad address is refused beside the field");
  await screenshot(page, "sign-in-refused");
  await page.getByLabel("Email address").fill(owner);
  await page.getByRole("button", { name: "Email me a code" }).click();
  await page.getByLabel("6-digit code").fill(await code(owner, 0));
  await screenshot(page, "code");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Your tenants" }).waitFor();
  const cookies = await me.cookies();
  const session = cookies.find((c) => c.name === "alcove_session");
  check(session && session.httpOnly && session.sameSite === "Lax", `the session cookie: ${JSON.stringify(cookies)}`);
  await screenshot(page, "overview");

  // 2. Create an instance and see it turn Ready (the phase refreshes by itself).
  await page.locator(`a[href="/t/${tenant}"]`).first().click();
  await page.getByRole("link", { name: "New instance" }).click();
  await page.getByLabel("Name", { exact: true }).fill(instance);
  await page.getByLabel("Model").selectOption("default");
  await page.getByLabel("Most tokens per answer").fill("64");
  // The onboarding questions write the system prompt from a template; unanswered ones are
  // refused beside their fields, and the prompt stays editable.
  const write = page.getByRole("button", { name: "Write the system prompt" });
  await write.click();
  await page.locator("#business-error").getByText("Give your business's name.").waitFor();
  await page.getByLabel("Business name").fill("Startup Inc.");
  await page.getByLabel("What is it for?").fill("answering staff questions about leave and parking");
  await page.getByLabel("Communication style").selectOption("concise");
  await write.click();
  const prompt = page.getByLabel("System prompt");
  await page.waitForFunction(() => document.querySelector("#system_prompt").value.startsWith("You are the assistant of Startup Inc."));
  check(!(await page.locator("#business-error").count()), "the error is gone once answered");
  check((await page.getByLabel("Name", { exact: true }).inputValue()) === instance, "the other fields are kept");
  await prompt.fill(`${await prompt.inputValue()}Sign answers with "HR desk".`);
  result.system_prompt = await prompt.inputValue();
  await screenshot(page, "new-instance");
  await page.getByRole("button", { name: "Create instance" }).click();
  await page.waitForURL(`**/t/${tenant}/i/${instance}?notice=created`);
  await page.locator('#status-facts [data-phase="Ready"]').waitFor({ timeout: 180_000 });
  await screenshot(page, "ready");

  // 3. Chat: the answer's tokens appear as they are streamed.
  await page.getByRole("link", { name: "Open the chat playground" }).click();
  await page.getByRole("button", { name: "Send" }).click();
  check(await page.locator("#message-error").isVisible(), "an empty message is refused beside the field");
  await page.getByLabel("Message").fill("Say hello in three words.");
  await page.getByRole("button", { name: "Send" }).click();
  const answer = page.locator("#log p.assistant span");
  await answer.and(page.locator(":not([aria-busy])")).waitFor({ timeout: 120_000 });
  const chunks = Number(await answer.getAttribute("data-chunks"));
  check(chunks > 1 && (await answer.textContent()).length > 0, `the answer arrived as a stream of tokens: ${chunks} chunks`);
  await page.waitForURL(/\/chat\?c=/);
  const conversation = new URL(page.url()).searchParams.get("c");
  await page.locator(`#conversations a[href$="?c=${conversation}"]`).waitFor();
  await screenshot(page, "chat");

  // 4. Delete the conversation: a confirmation, a fresh code; it leaves the instance's store
  // (the list comes from there).
  await page.locator(`#conversations a.delete[href*="/c/${conversation}/delete"]`).click();
  await page.getByText("This cannot be undone.").waitFor();
  await page.getByRole("button", { name: "Email me a confirmation code" }).click();
  await page.getByLabel("Confirmation code").fill(await code(owner, 1));
  await page.getByRole("button", { name: "Delete the conversation" }).click();
  await page.getByText("The conversation is deleted").waitFor();
  check((await page.locator(`#conversations a[href$="?c=${conversation}"]`).count()) === 0, "the conversation is gone from the list");
  await screenshot(page, "conversation-deleted");
  result.deleted_conversation = conversation;

  // Usage (the chat is in the request log, no content) and the data held about the account.
  await page.goto(`${url}/t/${tenant}`);
  await page.getByRole("link", { name: "Usage" }).click();
  await page.locator("#log tbody tr", { hasText: instance }).first().waitFor({ timeout: 30_000 });
  check(await page.locator("#token-chart").isVisible(), "the token chart is drawn");
  await screenshot(page, "usage");
  await page.goto(`${url}/t/${tenant}`);
  await page.getByRole("link", { name: "Your data" }).click();
  await page.locator("#volumes tbody tr", { hasText: instance }).first().waitFor();
  await screenshot(page, "your-data");
  await page.goto(`${url}/t/${tenant}/i/${instance}`);

  // 5. A knowledge base: created with a document, a second one uploaded and removed (each
  // indexes again), attached to the instance; the answer names its sources.
  await page.goto(`${url}/t/${tenant}/kb`);
  await page.getByLabel("Name", { exact: true }).fill("docs");
  await page.getByRole("button", { name: "Create and index" }).click();
  check(await page.locator("#file-error").isVisible(), "a missing file is refused beside the field");
  await page.getByLabel("Name", { exact: true }).fill("docs");
  await page.setInputFiles("#file", { name: "leave.md", mimeType: "text/markdown",
    buffer: Buffer.from("# Leave policy\nEvery employee gets 25 vacation days a year.\n") });
  await page.getByRole("button", { name: "Create and index" }).click();
  await page.waitForURL(`**/t/${tenant}/kb/docs?notice=uploaded`);
  await page.locator("#kb-documents", { hasText: /^1$/ }).waitFor({ timeout: 180_000 });
  await screenshot(page, "knowledge-base");
  await page.setInputFiles("#file", { name: "parking.html", mimeType: "text/html",
    buffer: Buffer.from("<html><body><h1>Parking</h1><p>Visitors park on level B2.</p></body></html>") });
  await page.getByRole("button", { name: "Upload and index" }).click();
  await page.locator("#kb-documents", { hasText: /^2$/ }).waitFor({ timeout: 180_000 });
  let asked = "";
  page.once("dialog", (d) => { asked = d.message(); });
  await page.getByRole("button", { name: "Remove parking.html" }).click();
  await page.getByText("Removed.").waitFor();
  check(asked.startsWith("Remove parking.html?"), `removing asked first: ${asked}`);
  await page.locator("#kb-documents", { hasText: /^1$/ }).waitFor({ timeout: 180_000 });
  await screenshot(page, "document-removed");
  await page.goto(`${url}/t/${tenant}/i/${instance}`);
  await page.getByLabel("Knowledge base it answers from").selectOption("docs");
  await page.getByRole("button", { name: "Attach" }).click();
  await page.getByText("The instance restarts to answer from it").waitFor();
  let sources = [];
  for (let i = 0; i < 60 && sources.length === 0; i++) {
    await page.goto(`${url}/t/${tenant}/i/${instance}/chat`);
    await page.getByLabel("Message").fill("How many vacation days do I get?");
    await page.getByRole("button", { name: "Send" }).click();
    await page.waitForFunction(() => {
      const a = document.querySelector("#log p.assistant span");
      return document.querySelector("#message-error")?.textContent || (a && a.getAttribute("aria-busy") === null);
    }, null, { timeout: 120_000 });
    sources = await page.locator("ul.sources li").allTextContents();
    if (sources.length === 0) await sleep(2000);
  }
  check(sources.some((s) => s.startsWith("docs: ") && s.includes("leave.md")), `the answer names its sources: ${sources}`);
  await screenshot(page, "answer-with-sources");

  // Export: the archive downloads from "Your data" (tests/dashboard_browser.rs opens it).
  await page.goto(`${url}/t/${tenant}/data`);
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("link", { name: "Download your data" }).click(),
  ]);
  check(/^alcove-export-.*\.tar$/.test(download.suggestedFilename()), `the file's name: ${download.suggestedFilename()}`);
  await download.saveAs(`${out}/export.tar`);
  check(!(await download.failure()), "the download completed");
  await page.goto(`${url}/t/${tenant}/i/${instance}`);

  // 6 (before destroying). The key, shown on request; rotated.
  await page.getByRole("button", { name: "Show API key" }).click();
  const key = await page.locator("#api-key").inputValue();
  check(/^[0-9a-f]{64}$/.test(key), `an API key: ${key}`);
  await screenshot(page, "key");
  await page.getByRole("button", { name: "Rotate API key" }).click();
  await page.getByText("A new API key is being made").waitFor();
  let rotated = key;
  for (let i = 0; i < 60 && rotated === key; i++) {
    await sleep(500);
    await page.reload();
    await page.getByRole("button", { name: "Show API key" }).click();
    rotated = await page.locator("#api-key").inputValue();
  }
  check(rotated !== key && /^[0-9a-f]{64}$/.test(rotated), "the page shows a new key after the rotation");
  await screenshot(page, "rotated");

  // Another tenant's owner, in their own browser: nothing of this tenant, even by crafted URLs
  // and form posts.
  const them = await browser.newContext();
  const theirs = await them.newPage();
  await theirs.goto(`${url}/signin`);
  await theirs.getByLabel("Email address").fill(other);
  await theirs.getByRole("button", { name: "Email me a code" }).click();
  await theirs.getByLabel("6-digit code").fill(await code(other, 0));
  await theirs.getByRole("button", { name: "Sign in" }).click();
  await theirs.getByRole("heading", { name: "Your tenants" }).waitFor();
  check(!(await theirs.content()).includes(`/t/${tenant}"`), "the other owner's overview lists only their tenants");
  for (const p of [`/t/${tenant}`, `/t/${tenant}/i/${instance}`, `/t/${tenant}/i/${instance}/destroy`]) {
    const r = await theirs.goto(url + p);
    check(r.status() === 404, `${p} answers the other owner 404, not ${r.status()}`);
  }
  await screenshot(theirs, "other-tenant-404");
  const posts = await theirs.evaluate(async ([tenant, instance]) => {
    // Their own valid CSRF token, from their own page.
    const home = await (await fetch("/")).text();
    const csrf = home.match(/name="csrf" value="([0-9a-f]+)"/)[1];
    const post = (p, body) => fetch(p, { method: "POST", body: new URLSearchParams({ csrf, ...body }) }).then((r) => r.status);
    return [
      await post(`/t/${tenant}/i/${instance}/state`, { state: "Suspended" }),
      await post(`/t/${tenant}/i/${instance}/key`, {}),
      await post(`/t/${tenant}/i/${instance}/rotate`, {}),
      await post(`/t/${tenant}/new`, { name: "intruder", model: "default" }),
    ];
  }, [tenant, instance]);
  check(posts.every((s) => s === 404), `crafted posts answer 404: ${posts}`);
  await them.close();

  // 7. Destroy: a confirmation, a fresh code, the pod gone.
  await page.getByRole("link", { name: "Destroy…" }).click();
  await page.getByText("This cannot be undone.").waitFor();
  await page.getByRole("button", { name: "Email me a confirmation code" }).click();
  await page.getByLabel("Confirmation code").fill(await code(owner, 2));
  await screenshot(page, "destroy-confirm");
  await page.getByRole("button", { name: `Destroy ${instance}` }).click();
  await page.getByText("Its pod is gone.").waitFor();
  await screenshot(page, "destroyed");

  // Sign out: the cookie is gone and the pages ask to sign in again.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL("**/signin");
  await page.goto(`${url}/t/${tenant}`);
  check(page.url().endsWith("/signin"), "signed out");
  check(problems.length === 0, `the pages ran without errors: ${problems.join("; ")}`);
  result.ok = true;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
