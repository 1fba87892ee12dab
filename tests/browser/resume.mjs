// Credit spent down by the injected clock until the instance was suspended
// (tests/dashboard_billing.rs moved it and checked the mails): the billing page says so, a
// top-up typed into the card field restores the credit, and the instance's page shows it
// running again.
//
// Environment: DASHBOARD_URL, MAILDIR, OUT (screenshots), OWNER, TENANT, INSTANCE, CODES (code
// messages the owner was sent before this journey).
import { check, env, launch, phone, screenshots, signIn, typeCard } from "./common.mjs";

const [url, maildir, out] = [env("DASHBOARD_URL"), env("MAILDIR"), env("OUT")];
const [owner, tenant, instance] = [env("OWNER"), env("TENANT"), env("INSTANCE")];
const screenshot = screenshots(out);
const browser = await launch();
const result = {};
try {
  const { page, problems } = await phone(browser);
  await signIn(page, url, maildir, owner, Number(env("CODES")));
  await page.goto(`${url}/t/${tenant}/i/${instance}`);
  await page.locator('#status-facts [data-phase="Suspended"]').waitFor();
  await screenshot(page, "suspended");
  await page.goto(`${url}/t/${tenant}/billing`);
  await page.getByText("Your credit is used up.").waitFor();
  await screenshot(page, "credit-used-up");

  await typeCard(page, "4242424242424242");
  await page.getByLabel("Amount (USD)").fill("25");
  await page.getByRole("button", { name: "Pay and add credit" }).click();
  await page.locator("#pay-status").getByText("Payment received").waitFor();
  await page.getByText("Your credit is used up.").waitFor({ state: "detached", timeout: 30_000 });
  result.balance = await page.locator("#balance-amount").innerText();
  await screenshot(page, "topped-up");

  // The instance resumes by itself: its page refreshes the phase.
  await page.goto(`${url}/t/${tenant}/i/${instance}`);
  const phase = page.locator("#status-facts [data-phase]");
  await page.waitForFunction(
    () => document.querySelector("#status-facts [data-phase]")?.dataset.phase !== "Suspended",
    null,
    { timeout: 60_000 },
  );
  result.phase = await phase.getAttribute("data-phase");
  await screenshot(page, "resumed");
  check(problems.length === 0, `the pages ran without errors: ${problems.join("; ")}`);
  result.ok = true;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
