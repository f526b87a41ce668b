"""The trading page in a real headless Chromium against a real stack (redis, worker, gunicorn).

Flow: account A's key entered on the page shows its balances; the order form says what an order
would lock, one it cannot pay for is rejected; an order placed from the page shows in open orders
and locks its funds; account B crosses it over REST; the fill (private channel), the trade
(public tape) and the new balances (private ``balance`` events) appear. A screenshot is saved to
tests/browser/artifacts/ (gitignored).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from bench.stack import Stack
from tests.web.funding import fund

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

ARTIFACTS = Path(__file__).with_name("artifacts")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    st = Stack(log_dir=tmp_path_factory.mktemp("page-stack"))
    st.start()
    yield st
    st.stop()


def test_place_see_open_cross_and_fill(stack, chromium):
    from playwright.sync_api import expect, sync_playwright

    alice = stack.create_account("alice")
    bob = stack.create_account("bob")
    fund(stack, alice["account_id"], {"BTC": "1", "USDT": "100"})
    fund(stack, bob["account_id"])
    # some depth for the ladder to show
    for side, price in (("sell", "101.50"), ("sell", "102"), ("buy", "98"), ("buy", "97.25")):
        r = requests.post(
            stack.url + "/api/v1/orders",
            json={
                "symbol": "BTC-USDT",
                "side": side,
                "type": "limit",
                "price": price,
                "quantity": "0.35",
            },  # fmt: skip
            headers={"X-API-Key": bob["api_key"]},
            timeout=10,
        )
        assert r.status_code == 201, r.text

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # a CSP violation (inline script or style the policy blocks) is a console error
            page.on("console", lambda msg: errors.append(msg.text)
                    if msg.type == "error" and "Content Security Policy" in msg.text else None)
            static: dict[str, dict[str, str]] = {}
            page.on("response", lambda r: static.__setitem__(r.url, r.headers)
                    if "/static/" in r.url else None)
            response = page.goto(stack.url + "/#BTC-USDT")
            assert response is not None
            for headers in (response.headers, *static.values()):
                assert "script-src 'self'" in headers["content-security-policy"]
                assert "unsafe-inline" not in headers["content-security-policy"]
                assert headers["x-frame-options"] == "DENY"
                assert headers["x-content-type-options"] == "nosniff"
                assert headers["referrer-policy"] == "no-referrer"
            assert {u.rpartition("/")[2] for u in static} >= {"app.js", "style.css"}
            expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")
            expect(page.locator("#book-asks .lvl")).to_have_count(2)
            expect(page.locator("#book-bids .lvl").first).to_have_attribute("data-price", "98.00")

            page.fill("#api-key", alice["api_key"])
            page.click("#save-key")
            expect(page.locator("#account")).to_have_text(f"account {alice['account_id']}")
            # the key stays in this tab's sessionStorage, never in localStorage
            assert page.evaluate("sessionStorage.getItem('fairbook.apiKey')") == alice["api_key"]
            assert page.evaluate("localStorage.getItem('fairbook.apiKey')") is None
            assert page.evaluate("localStorage.length") == 0
            usdt = page.locator("#balances tr[data-asset='USDT']")
            btc = page.locator("#balances tr[data-asset='BTC']")
            expect(usdt.locator("td.available")).to_have_text("100.00000000")
            expect(usdt.locator("td.locked")).to_have_text("0.00000000")
            expect(btc.locator("td.available")).to_have_text("1.00000000")

            page.click("#side-buy")
            page.select_option("#type", "limit")
            page.select_option("#tif", "GTC")
            page.fill("#price", "99.50")
            page.fill("#quantity", "2")  # 199 USDT and the fee: more than alice has
            expect(page.locator("#order-lock")).to_have_text(
                "Locks 199.2 USDT · available 100 · not enough")
            page.click("#submit")
            expect(page.locator("#order-result")).to_have_text("rejected: insufficient_funds")
            page.click("#side-sell")  # a sell locks its quantity of the base
            expect(page.locator("#order-lock")).to_have_text(
                "Locks 2 BTC · available 1 · not enough")
            page.click("#side-buy")
            page.fill("#quantity", "0.2")  # 0.2 x 99.50 + 0.00001 USDT per lot (each lot's fee)
            expect(page.locator("#order-lock")).to_have_text("Locks 19.92 USDT · available 100")
            page.click("#submit")
            expect(page.locator("#order-result")).to_contain_text("new")
            expect(usdt.locator("td.locked")).to_have_text("19.92000000")
            expect(usdt.locator("td.available")).to_have_text("80.08000000")
            row = page.locator("#open-orders tr")
            expect(row).to_have_count(1)
            order_id = row.first.get_attribute("data-order-id")
            assert order_id
            expect(row.first).to_contain_text("99.50")
            expect(page.locator("#book-bids .lvl").first).to_have_attribute("data-price", "99.50")

            # bob sells into it over REST
            r = requests.post(
                stack.url + "/api/v1/orders",
                json={
                    "symbol": "BTC-USDT",
                    "side": "sell",
                    "type": "limit",
                    "price": "99.50",
                    "quantity": "0.05",
                    "time_in_force": "IOC",
                },  # fmt: skip
                headers={"X-API-Key": bob["api_key"]},
                timeout=10,
            )
            assert r.status_code == 201 and r.json()["status"] == "filled", r.text

            fill = page.locator(f"#fills tr[data-order-id='{order_id}']")
            expect(fill).to_have_count(1)
            expect(fill).to_contain_text("99.50")
            expect(fill).to_contain_text("0.05000")
            expect(fill).to_contain_text("maker")
            trade = page.locator("#trades .tr").first
            expect(trade).to_contain_text("99.50")
            expect(trade).to_contain_text("0.05000")
            expect(page.locator("#last-price")).to_have_text("99.50")
            # the candle chart and the 24 h change follow the trade (GET klines / ticker)
            expect(page.locator("#candles")).to_have_attribute("data-candles", "1")
            expect(page.locator("#change-24h")).to_have_text("0.00 (0.000%)")
            expect(page.locator("#volume-24h")).to_contain_text("0.05 ")
            expect(page.locator("#open-orders tr").first).to_contain_text("partially filled")
            expect(page.locator("#book-bids .lvl").first).to_contain_text("0.15000")
            # paid 4.975 + the 0.004975 maker fee; the rest, 0.15 x 99.50 + fees, stays locked
            expect(usdt.locator("td.locked")).to_have_text("14.94000000")
            expect(usdt.locator("td.available")).to_have_text("80.08002500")
            expect(btc.locator("td.available")).to_have_text("1.05000000")
            expect(page.locator("#open-orders tr").first).to_contain_text("14.94000000 USDT")

            page.wait_for_timeout(500)  # let the flash animations settle
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "trading-page.png"
            page.screenshot(path=str(shot), full_page=False)
            print(f"screenshot: {shot}")

            # cancel from the page
            page.locator("#open-orders tr").first.locator("button.cancel").click()
            expect(page.locator("#open-orders tr")).to_have_count(0)
            expect(usdt.locator("td.locked")).to_have_text("0.00000000")  # all released
            expect(usdt.locator("td.available")).to_have_text("95.02002500")
            page.wait_for_timeout(300)

            assert errors == [], errors
        finally:
            browser.close()
