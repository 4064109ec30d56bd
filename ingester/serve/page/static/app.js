// The usage page: the newest snapshot and the history as a chart, kept current by polling
// with conditional GETs (an unchanged history costs one 304 per poll, and the newest
// snapshot's body once a minute, as its age moves on). No build step;
// uPlot is loaded before this file. Every request goes to this page's own server.
"use strict";

(function () {
  const API = "api/claude/console-usage";
  const SERIES = API + "/series";
  const FORECAST = API + "/forecast";
  const STALE_AFTER_MS = 10 * 60 * 1000; // the same rule as the API's isStale
  // A snapshot dated up to this far past the server's clock is "just now": the clock
  // comes from the Date header (whole seconds) and a scraper's clock may run a little fast.
  const AHEAD_OK_MS = 2 * 60 * 1000;
  // The forecast's tolerance for a clock that runs ahead: a snapshot observed later than
  // this after it was stored, or after now, is left out of it, and so of the chart.
  const CLOCK_AHEAD_MS = 60 * 60 * 1000;
  // A line breaks where its limit went unread for longer than GAP_FACTOR times the usual
  // interval between snapshots (the median), and never for less than GAP_FLOOR_S: no
  // snapshot for that long is the page's own "the scraper may have stopped" (STALE_AFTER).
  const GAP_FACTOR = 4;
  const GAP_FLOOR_S = STALE_AFTER_MS / 1000;
  const RANGES = { "24h": 24 * 3600 * 1000, "7d": 7 * 24 * 3600 * 1000, all: null };
  const WINDOWS = [
    { key: "currentSession", label: "Current session", gauge: "gauge-session" },
    { key: "weeklyLimits.allModels", label: "Weekly, all models", gauge: "gauge-all" },
    { key: "weeklyLimits.sonnetOnly", label: "Weekly, Sonnet only", gauge: "gauge-sonnet" },
  ];
  // Told apart by dash pattern as well as colour (and named in the legend).
  const LINES = [
    { stroke: "#1f4e8c", dash: undefined },
    { stroke: "#b35900", dash: [10, 5] },
    { stroke: "#1a7f37", dash: [3, 4] },
  ];

  const MARKERS = ["solid", "solid", "dashed", "dotted"]; // per series, time first

  const params = new URLSearchParams(window.location.search);
  // At most a day: a longer delay overflows setTimeout's 32 bits, which then fires at
  // once, and the page would ask the server as fast as it answers.
  const REFRESH_MAX_S = 86400;
  const refreshMs =
    Math.min(REFRESH_MAX_S, Math.max(1, Number(params.get("refresh")) || 30)) * 1000;
  // A server (or a proxy before it) that takes a request and never answers would hold
  // the page on its last look, "Fresh" for ever: each request gives up after this long,
  // said as a server out of reach, and the next look comes as usual.
  const REQUEST_TIMEOUT_S = 15;

  const state = {
    latestTag: null,
    latest: null,
    damaged: null, // why the newest version cannot be read (the server's message), or null
    newest: null, // the newest version shown, and its place among the versions held
    seriesTag: null,
    seriesKey: null, // the range the rows were fetched for
    forecastTag: null,
    forecast: null, // the answer of the forecast endpoint, or null
    future: null, // seconds: the furthest projection end or reset the x axis shows
    drawn: [null, null], // seconds: the first and last time of the points drawn
    rows: [], // export rows, oldest first
    columns: [],
    skipped: 0,
    ahead: 0, // rows in the range left out as dated ahead of the clock
    range: "7d",
    offsetMs: 0, // server clock minus ours, from the Date header
    chart: null,
    filler: new Set(), // chart indexes that stand for a gap, not a snapshot
    timer: null,
  };

  const $ = (id) => document.getElementById(id);

  function serverNow() {
    return Date.now() + state.offsetMs;
  }

  function noteServerTime(response) {
    const date = Date.parse(response.headers.get("Date") || "");
    if (!Number.isNaN(date)) state.offsetMs = date - Date.now();
  }

  // An answer the page cannot use (its status said); anything else thrown is a
  // request that got no answer at all.
  class ServerAnswer extends Error {}

  async function conditionalGet(url, tag) {
    // no-store keeps the browser's own cache out of it, so a 304 reaches us as a 304.
    const headers = tag ? { "If-None-Match": tag } : {};
    const signal = AbortSignal.timeout(REQUEST_TIMEOUT_S * 1000);
    try {
      const response = await fetch(url, { headers, cache: "no-store", signal });
      noteServerTime(response);
      if (response.status === 304) return { status: 304 };
      const body = await response.json().catch((err) => {
        if (signal.aborted) throw err; // the body never came: no answer, not a bad one
        return null;
      });
      return { status: response.status, tag: response.headers.get("ETag"), body };
    } catch (err) {
      if (signal.aborted) throw new Error("no answer in " + REQUEST_TIMEOUT_S + " s");
      throw err;
    }
  }

  // The keys of a limit's dotted path: a key holding a dot (or starting with a quote)
  // is written there as a JSON string, "a.b", so a plain split would misread it.
  function pathParts(path) {
    const parts = [];
    let i = 0;
    for (;;) {
      if (path[i] === '"') {
        let j = i + 1;
        while (j < path.length && path[j] !== '"') j += path[j] === "\\" ? 2 : 1;
        const end = j + 1;
        if (j < path.length && (end === path.length || path[end] === ".")) {
          try {
            parts.push(JSON.parse(path.slice(i, end)));
            if (end === path.length) return parts;
            i = end + 1;
            continue;
          } catch (_) {
            // not a JSON string after all: read as written, below
          }
        }
      }
      const dot = path.indexOf(".", i);
      if (dot < 0) {
        parts.push(path.slice(i));
        return parts;
      }
      parts.push(path.slice(i, dot));
      i = dot + 1;
    }
  }

  function pick(obj, path) {
    return pathParts(path).reduce((o, k) => (o == null ? undefined : o[k]), obj);
  }

  // One decimal, as the command line shows it, but never rounded up to a 100 % the
  // reading has not reached (99.97 shows as "99.97 %"): 100 % says the limit is reached.
  function formatPct(value) {
    if (value == null || Number.isNaN(value)) return "\u2013";
    if (Number.isInteger(value)) return String(value) + "\u00a0%";
    const text = value.toFixed(1);
    return (value < 100 && Number(text) >= 100 ? String(value) : text) + "\u00a0%";
  }

  // How old a snapshot is, by the server's clock. A little ahead of that clock is "just
  // now"; further ahead is said as it is (the scraper's clock is wrong).
  function formatAge(ms) {
    if (ms < -AHEAD_OK_MS) return duration(-ms) + " ahead of the server's clock";
    const s = Math.round(ms / 1000);
    if (s < 5) return "just now";
    if (s < 60) return s + " s ago";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min ago";
    const h = Math.floor(m / 60);
    if (h < 48) return h + " h " + (m % 60) + " min ago";
    return Math.floor(h / 24) + " days ago";
  }

  // One time format for the whole page, in the viewer's time zone: the locale's own
  // clock, with the hour as that clock writes it ("8:59 AM" on a 12-hour clock, "08:59"
  // on a 24-hour one; never "08:59 AM").
  const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  const HOUR = new Intl.DateTimeFormat(undefined, { hour: "numeric" }).resolvedOptions().hour12
    ? "numeric"
    : "2-digit";
  const timeFormat = new Intl.DateTimeFormat(undefined, {
    weekday: "short", day: "numeric", month: "short", hour: HOUR, minute: "2-digit",
  });
  const shortTime = new Intl.DateTimeFormat(undefined, {
    weekday: "short", hour: HOUR, minute: "2-digit",
  });
  const clockTime = new Intl.DateTimeFormat(undefined, { hour: HOUR, minute: "2-digit" });
  const dayOnly = new Intl.DateTimeFormat(undefined, {
    weekday: "short", day: "numeric", month: "short",
  });

  // The time axis in the same format: the time at each tick, and the day under the first
  // tick of each day (the day alone when the ticks are days apart). The leftmost tick
  // names its day only when the next tick is on the same day: else the next one names
  // the next day right beside it.
  function axisTimes(u, splits, axis, space, incr) {
    const day = (t) => new Date(t * 1000).toDateString();
    return splits.map((t, i) => {
      const ms = t * 1000;
      if (incr >= 86400) return dayOnly.format(ms);
      const first =
        i === 0
          ? splits.length === 1 || day(splits[1]) === day(t)
          : day(splits[i - 1]) !== day(t);
      return clockTime.format(ms) + (first ? "\n" + dayOnly.format(ms) : "");
    });
  }

  // Within six days a weekday names the day; further off it takes the date too.
  function when(ms) {
    const near = Math.abs(ms - serverNow()) < 6 * 24 * 3600 * 1000;
    return (near ? shortTime : timeFormat).format(ms);
  }

  // A span of time in words: "12 min", "4 h 39 min" (under 10 h), "41 h", "3.5 days".
  function duration(ms) {
    const minutes = Math.max(0, Math.round(ms / 60000));
    if (minutes < 60) return minutes + " min";
    if (minutes < 600) return Math.floor(minutes / 60) + " h" + (minutes % 60 ? " " + (minutes % 60) + " min" : "");
    const hours = Math.round(minutes / 60);
    return hours < 72 ? hours + " h" : (hours / 24).toFixed(1) + " days";
  }

  // "in 41 h" or "12 min ago", from the server's now.
  function relative(ms) {
    const ahead = ms - serverNow();
    return ahead >= 0 ? "in " + duration(ahead) : duration(-ahead) + " ago";
  }

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  function showConnection(problem) {
    const el = $("connection");
    el.hidden = !problem;
    el.textContent = problem || "";
  }

  // -- the newest snapshot ----------------------------------------------------------------

  // What a card shows: the reading the forecast goes by, so that the percentage, the
  // reset and the verdict on a card are one reading's. That is the newest snapshot's (by
  // lastUpdated, each no later than when it was stored: a version stored last may have
  // been observed hours before the others, a scraper sending what it queued, and one
  // from a clock that ran ahead is not newer than those stored after it), or, when that
  // snapshot lacks the limit (a partial
  // scrape), the last reading the forecast holds, said to be held. The latest version's
  // own reading only where the forecast has none (not loaded yet).
  function reading(key) {
    const limit = forecastFor(key);
    if (limit) {
      return {
        pct: limit.percentageUsed,
        resetsIn: limit.resetsIn,
        limit,
        held: limit.inNewest === false,
      };
    }
    const section = state.latest ? pick(state.latest, key) : null;
    if (section && typeof section.percentageUsed === "number") {
      return { pct: section.percentageUsed, resetsIn: section.resetsIn, limit: null, held: false };
    }
    return null;
  }

  // "resets Mon 8:59 AM (in 41 h)", in the page's one format and zone; the console's
  // own words only when they name no time this tool reads.
  function resetWords(found) {
    if (!found) return ["\u2013", ""];
    const said = found.resetsIn == null ? "" : "the console says \u201c" + found.resetsIn + "\u201d";
    const at = found.limit && found.limit.resetsAt ? Date.parse(found.limit.resetsAt) : NaN;
    if (Number.isNaN(at)) {
      return [found.resetsIn == null ? "reset time unknown" : "resets: " + found.resetsIn, said];
    }
    const due = at <= serverNow() ? "reset due " : "resets ";
    return [due + when(at) + " (" + relative(at) + ")", said];
  }

  function fillGauge(card, found) {
    const pct = found ? found.pct : null;
    const bar = card.querySelector(".bar");
    card.querySelector(".pct").textContent = formatPct(pct);
    const [resets, said] = resetWords(found);
    const resetLine = card.querySelector(".resets");
    if (resetLine.textContent !== resets) resetLine.textContent = resets;
    if (said) resetLine.title = said;
    else resetLine.removeAttribute("title");
    let level = "none";
    let words = " no data";
    if (pct != null) {
      level = pct >= 95 ? "limit" : pct >= 80 ? "high" : "ok";
      words = level === "limit" ? " at the limit" : level === "high" ? " high" : "";
    }
    card.dataset.level = level;
    card.querySelector(".level").textContent = words;
    card.querySelector(".fill").style.width = (pct == null ? 0 : Math.min(100, pct)) + "%";
    const held = card.querySelector(".held");
    let heldWords = "";
    if (found && found.held) {
      const limit = found.limit;
      const observed = limit.observedAt ? Date.parse(limit.observedAt) : NaN;
      heldWords =
        "last read " + (Number.isNaN(observed) ? "earlier" : formatAge(serverNow() - observed)) +
        "; not in the newest snapshot" + (limit.missingReason ? " (" + limit.missingReason + ")" : "");
    }
    card.dataset.held = String(Boolean(heldWords));
    held.hidden = !heldWords;
    if (held.textContent !== heldWords) held.textContent = heldWords;
    if (pct == null) {
      bar.removeAttribute("aria-valuenow");
      bar.setAttribute("aria-valuetext", "no data");
    } else {
      bar.setAttribute("aria-valuenow", String(pct));
      bar.setAttribute(
        "aria-valuetext",
        formatPct(pct) + " used" + words + (heldWords ? ", " + heldWords : ""),
      );
    }
  }

  function renderCards() {
    WINDOWS.forEach((w) => fillGauge($(w.gauge), reading(w.key)));
  }

  // -- the forecast ------------------------------------------------------------------------

  function forecastFor(key) {
    const limits = state.forecast ? state.forecast.limits : [];
    return limits.find((l) => l.limit === key) || null;
  }

  // The card's sentence and its kind, as `ingester forecast` words it.
  function verdict(limit) {
    if (!limit) return ["none", "\u2013"];
    const exhausts = limit.exhaustsAt ? Date.parse(limit.exhaustsAt) : null;
    const resets = limit.resetsAt ? Date.parse(limit.resetsAt) : null;
    if (limit.percentageUsed >= 100 && exhausts != null) {
      // At 100 % in the first reading of the basis already: reached then or before.
      const since = limit.basis ? Date.parse(limit.basis.since) : null;
      const atLeast = since != null && exhausts <= since ? "at least " : "";
      return ["exhausts", "at the limit since " + atLeast + when(exhausts)];
    }
    if (limit.ratePerHour == null) return ["unknown", "not enough data"];
    if (exhausts == null) {
      // Too slow a rise to reach 100 % within a year, and the reset may come later than
      // that too: neither order is known, as `ingester forecast` says.
      if (resets != null && limit.beforeReset == null) {
        return [
          "unknown",
          "100\u00a0% not within a year; whether before or after the reset (" +
            when(resets) +
            " at the earliest) is not known",
        ];
      }
      if (resets != null) return ["resets", "resets before the limit"];
      // Too slow a rise to project is still a rise, whatever the rate column shows.
      return ["unknown", limit.ratePerHour > 0 ? "100\u00a0% not within a year" : "not rising"];
    }
    const by = "at this rate 100\u00a0% by " + when(exhausts);
    if (resets == null) return ["exhausts", by + " (reset time unknown)"];
    // 100 % within the span the reset's words allow ("2 hr": that hour): either may come
    // first, so neither is said, as `ingester forecast` says it.
    if (limit.beforeReset == null) {
      return ["exhausts", by + ", about when it resets (" + when(resets) + " at the earliest)"];
    }
    if (limit.beforeReset) {
      return [
        "exhausts",
        by + ", " + duration(resets - exhausts) + " before the reset (" + when(resets) + ")",
      ];
    }
    return ["resets", "resets before the limit"];
  }

  function renderForecast(card, limit) {
    const el = card.querySelector(".forecast");
    const [kind, words] = verdict(limit);
    el.dataset.verdict = kind;
    if (el.textContent !== words) el.textContent = words;
  }

  // An element id for a limit's name, one per name: each character outside [A-Za-z0-9-]
  // becomes "_<hex code>_", so names that differ only there ("opüs", "opäs") stay apart.
  function idFor(name) {
    return name.replace(/[^A-Za-z0-9-]/g, (c) => "_" + c.charCodeAt(0).toString(16) + "_");
  }

  // Limits beyond the three known ones get a card of their own (no chart line).
  function extraCard(limit) {
    const id = "gauge-extra-" + idFor(limit.limit);
    let card = $(id);
    if (card) return card;
    card = document.createElement("article");
    card.className = "gauge";
    card.id = id;
    card.dataset.key = limit.limit;
    card.dataset.extra = "true";
    const title = document.createElement("h3");
    title.id = id + "-title";
    title.textContent = limit.limit;
    const value = document.createElement("p");
    value.className = "value";
    value.innerHTML = '<span class="pct"></span><span class="level"></span>';
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-labelledby", title.id);
    bar.innerHTML = '<div class="fill"></div>';
    const resets = document.createElement("p");
    resets.className = "resets";
    const held = document.createElement("p");
    held.className = "held";
    held.hidden = true;
    const words = document.createElement("p");
    words.className = "forecast";
    card.append(title, value, bar, resets, held, words);
    document.querySelector(".gauges").append(card);
    return card;
  }

  // A zone's canonical name ("Etc/UTC" and "UTC" are one zone); null when unknown here.
  function canonicalZone(name) {
    try {
      return new Intl.DateTimeFormat("en", { timeZone: name }).resolvedOptions().timeZone;
    } catch (err) {
      return null;
    }
  }

  function renderZone() {
    let words = "Times on this page are in your time zone, " + ZONE + ".";
    const consoleZone = state.forecast ? state.forecast.consoleTimeZone : null;
    if (consoleZone && canonicalZone(consoleZone) !== canonicalZone(ZONE)) {
      words += " The console's own reset times (\u201cMon 8:59 AM\u201d) are read in " +
        consoleZone + " and shown here in yours.";
    }
    setText("zone-note", words);
  }

  // The cards go by the forecast's newest snapshot; where that is not the latest
  // version (whose time and name the lines above show), the server says why.
  function renderForecastOf() {
    const answer = state.forecast;
    const why = answer && answer.notLatest ? String(answer.notLatest) : "";
    const el = $("forecast-of");
    el.hidden = !why;
    setText(
      "forecast-of",
      why ? "The cards and the forecast are of " + answer.version + ", not the latest " +
        "version: " + why + "." : "",
    );
  }

  function renderForecasts() {
    renderCards();
    renderZone();
    renderForecastOf();
    WINDOWS.forEach((w) => renderForecast($(w.gauge), forecastFor(w.key)));
    const known = new Set(WINDOWS.map((w) => w.key));
    const extras = state.forecast ? state.forecast.limits.filter((l) => !known.has(l.limit)) : [];
    const shown = new Set();
    extras.forEach((limit) => {
      const card = extraCard(limit);
      shown.add(card.id);
      fillGauge(card, reading(limit.limit));
      renderForecast(card, limit);
    });
    document.querySelectorAll('.gauge[data-extra="true"]').forEach((card) => {
      if (!shown.has(card.id)) card.remove();
    });
  }

  async function refreshForecast() {
    const answer = await conditionalGet(FORECAST, state.forecastTag);
    if (answer.status === 304) return false;
    if (answer.status === 404) {
      state.forecast = null;
      state.forecastTag = null;
    } else if (answer.status !== 200 || !answer.body) {
      throw new ServerAnswer("answered " + answer.status + " for the forecast");
    } else {
      state.forecast = answer.body;
      state.forecastTag = answer.tag;
    }
    renderForecasts();
    return true;
  }

  // When the newest snapshot was taken, as the server reads its lastUpdated (so that the
  // page, the answer's ageMinutes and isStale, and /api/health agree): an ISO 8601
  // date-time, UTC when it names no offset (the browser would take its own zone); NaN
  // when the server found no time in it (a number, words), whatever Date.parse makes of
  // that. A form the browser cannot parse goes by the server's age in minutes.
  function observedAt(payload) {
    const text = payload.lastUpdated;
    if (typeof text !== "string" || typeof payload.ageMinutes !== "number") return NaN;
    const upper = text.toUpperCase();
    const zoned = /[T ]\d\d(:?\d\d)*(\.\d+)?$/.test(upper) ? upper + "Z" : upper;
    const parsed = Date.parse(zoned);
    return Number.isNaN(parsed) ? serverNow() - payload.ageMinutes * 60000 : parsed;
  }

  function renderFreshness() {
    const badge = $("fresh-badge");
    const payload = state.latest;
    if (!payload) return;
    const updated = observedAt(payload);
    const age = serverNow() - updated;
    const stale = Number.isNaN(updated) || age > STALE_AFTER_MS;
    badge.dataset.state = stale ? "stale" : "fresh";
    setText("fresh-badge", stale ? "Stale" : "Fresh");
    const when = Number.isNaN(updated) ? "an unreadable time" : timeFormat.format(updated);
    setText(
      "freshness",
      "Last updated " + when + " (" + (Number.isNaN(updated) ? "?" : formatAge(age)) + ")" +
        (stale ? "; older than 10 minutes, so the scraper may have stopped." : "."),
    );
  }

  function renderLatest() {
    const payload = state.latest;
    if (!payload && state.damaged) {
      setText("version-info", "");
      $("fresh-badge").dataset.state = "stale";
      setText("fresh-badge", "Damaged");
      setText(
        "freshness",
        "The newest version cannot be read: " + state.damaged + ". The cards, the " +
          "forecast and the chart come from the versions that can; 'ingester verify' " +
          "names what is wrong.",
      );
      renderCards();
      return;
    }
    if (!payload) {
      setText("version-info", "");
      $("fresh-badge").dataset.state = "unknown";
      setText("fresh-badge", "No data");
      setText("freshness", "No snapshot has been stored yet.");
      renderCards();
      return;
    }
    renderCards();
    $("partial-badge").hidden = payload.isPartial !== true;
    const errors = payload.extractionErrors || {};
    const keys = Object.keys(errors);
    $("errors-badge").hidden = keys.length === 0;
    $("errors-details").hidden = keys.length === 0;
    setText("errors-badge", keys.length + " extraction error" + (keys.length === 1 ? "" : "s"));
    const list = $("errors-list");
    list.replaceChildren(
      ...keys.map((k) => {
        const item = document.createElement("li");
        item.textContent = k + ": " + errors[k];
        return item;
      }),
    );
    const info = payload.versionInfo;
    if (info) {
      setText(
        "version-info",
        "Version " + info.current + " of " + info.total + ", stored " +
          timeFormat.format(Date.parse(info.timestamp)) + " (" + info.filename + ").",
      );
    }
    renderFreshness();
  }

  async function refreshLatest() {
    const answer = await conditionalGet(API, state.latestTag);
    if (answer.status === 304) return false;
    if (answer.status === 404) {
      state.latest = null;
      state.latestTag = null;
      state.damaged = null;
      renderLatest();
      return state.newest !== null ? ((state.newest = null), true) : false;
    }
    if (answer.status === 502 && answer.body && answer.body.error === "CorruptVersion") {
      // The server answers, but its newest version is damaged: said as that, while the
      // forecast and the chart go on from the readable versions.
      state.latest = null;
      state.latestTag = null;
      state.damaged = String(answer.body.message);
      renderLatest();
      const changed = state.newest !== state.damaged;
      state.newest = state.damaged;
      return changed;
    }
    if (answer.status !== 200 || !answer.body) {
      throw new ServerAnswer("answered " + answer.status + " for the newest snapshot");
    }
    state.damaged = null;
    state.latestTag = answer.tag;
    state.latest = answer.body;
    renderLatest();
    // The versions held, not only the newest: retention deleting old ones changes the
    // chart's rows and the forecast as much as a new version does.
    const info = answer.body.versionInfo;
    const held = info ? info.filename + " " + info.current + "/" + info.total : null;
    const changed = held !== state.newest;
    state.newest = held;
    return changed;
  }

  // -- the history chart ------------------------------------------------------------------

  function windowStart() {
    const span = RANGES[state.range];
    return span == null ? null : serverNow() - span;
  }

  async function refreshSeries() {
    const range = state.range;
    const start = windowStart();
    // Selected and drawn by the time each snapshot was observed, not when it was stored:
    // a backfill stored in one second still spreads over its own hours.
    let url = SERIES + "?by=lastUpdated";
    if (start != null) url += "&since=" + encodeURIComponent(new Date(start).toISOString());
    const sameRange = state.seriesKey === range;
    const answer = await conditionalGet(url, sameRange ? state.seriesTag : null);
    // A range picked meanwhile has its own request: this answer is for the old one.
    if (answer.status === 304 || state.range !== range) return;
    if (answer.status !== 200 || !answer.body) {
      throw new ServerAnswer("answered " + answer.status + " for the history");
    }
    state.seriesTag = answer.tag;
    state.seriesKey = range;
    state.columns = answer.body.columns;
    state.rows = answer.body.rows;
    state.skipped = answer.body.skipped.length;
    drawChart();
  }

  // The longest stretch without a reading that a line is drawn across (seconds).
  function gapLimit(xs) {
    const steps = [];
    for (let i = 1; i < xs.length; i++) if (xs[i] > xs[i - 1]) steps.push(xs[i] - xs[i - 1]);
    if (!steps.length) return GAP_FLOOR_S;
    steps.sort((a, b) => a - b);
    return Math.max(GAP_FLOOR_S, GAP_FACTOR * steps[Math.floor(steps.length / 2)]);
  }

  // The chart's columns. uPlot joins a line across `undefined` and breaks it at `null`:
  // a snapshot that lacks a limit (a partial scrape) is `undefined` for it, so its line
  // carries on; where a limit went unread for longer than gapLimit() the rows between
  // are `null`, or one row with no snapshot is put in the middle when there are none.
  function chartData() {
    const col = (name) => state.columns.indexOf(name);
    const at = col("lastUpdated");
    const stored = col("ingestedAt");
    const start = windowStart();
    const latest = serverNow() + CLOCK_AHEAD_MS;
    // Observed after the snapshot the forecast is of: stored before it, from a clock that
    // ran ahead (the forecast leaves those out too).
    const asOf = state.forecast && state.forecast.asOf ? Date.parse(state.forecast.asOf) : NaN;
    const ahead = (r) =>
      Date.parse(r[at]) > latest ||
      Date.parse(r[at]) > Date.parse(r[stored]) + CLOCK_AHEAD_MS ||
      Date.parse(r[at]) > asOf;
    // Versions that slid out of the window since the rows were fetched are left out here,
    // and those the forecast leaves out as dated ahead (the cards would not match them).
    const inWindow = state.rows.filter((r) => start == null || Date.parse(r[at]) >= start);
    state.ahead = inWindow.filter(ahead).length;
    const rows = inWindow
      .filter((r) => !ahead(r))
      .sort((a, b) => Date.parse(a[at]) - Date.parse(b[at]));
    const times = rows.map((r) => Date.parse(r[at]) / 1000);
    const values = WINDOWS.map((w) => {
      const i = col(w.key + ".percentageUsed");
      return rows.map((r) => (typeof r[i] === "number" ? r[i] : undefined));
    });
    const limit = gapLimit(times);
    const breaks = new Set(); // row indexes before which a series must break
    const lastAt = WINDOWS.map(() => null);
    const breakAt = WINDOWS.map(() => []);
    times.forEach((t, r) => {
      values.forEach((ys, k) => {
        if (ys[r] === undefined) return;
        const prev = lastAt[k];
        if (prev != null && t - times[prev] > limit) {
          breakAt[k].push([prev, r]);
          if (r === prev + 1) breaks.add(r);
        }
        lastAt[k] = r;
      });
    });
    const xs = [];
    const ys = WINDOWS.map(() => []);
    const filler = new Set(); // chart indexes of the rows with no snapshot
    times.forEach((t, r) => {
      if (breaks.has(r)) {
        filler.add(xs.length);
        xs.push((times[r - 1] + t) / 2);
        ys.forEach((column) => column.push(undefined));
      }
      xs.push(t);
      ys.forEach((column, k) => column.push(values[k][r]));
    });
    // Chart index of each row, then null between the two ends of every long gap.
    const index = [];
    let shift = 0;
    times.forEach((_, r) => {
      if (breaks.has(r)) shift++;
      index.push(r + shift);
    });
    breakAt.forEach((pairs, k) => {
      pairs.forEach(([a, b]) => {
        for (let c = index[a] + 1; c < index[b]; c++) ys[k][c] = null;
      });
    });
    let gaps = 0;
    for (let r = 1; r < times.length; r++) if (times[r] - times[r - 1] > limit) gaps++;
    return { rows, times, filler, gaps, limit, data: [xs, ...ys] };
  }

  function chartWidth() {
    return Math.max(240, $("chart").clientWidth || 600);
  }

  function chartHeight() {
    return window.innerWidth < 600 ? 260 : 320;
  }

  // The x axis spans the whole range picked (up to now), not only the data in it, so
  // a gap in the history shows as a gap.
  // The projections and the resets ahead widen it, by at most half the span shown.
  // Its ends come from the range and from the snapshots' own times (state.drawn), not
  // from the min and max uPlot passes in: when every point is at one instant (a single
  // snapshot, or several observed together) uPlot widens a time scale itself before
  // asking, by 86400 / ms, which with times in seconds is a thousand days, and the
  // axis then ran years past now with the point squeezed against its left edge. uPlot's
  // values are kept only for all the history with points at more than one instant:
  // there they are the points' own ends, or a stretch dragged out on the chart to zoom.
  function xRange(u, min, max) {
    const start = windowStart();
    const now = serverNow() / 1000;
    const [first, last] = state.drawn;
    let lo, hi;
    if (start != null) {
      // The newest snapshot may be dated a little after now (a clock running ahead).
      [lo, hi] = [start / 1000, Math.max(now, last == null ? now : last)];
    } else if (first == null || first === last) {
      const at = last == null ? now : last;
      [lo, hi] = [at - 3600, at + 60];
    } else if (min == null || max == null || !(max > min)) {
      [lo, hi] = [first, last];
    } else {
      [lo, hi] = [min, max];
    }
    if (state.future != null && state.future > hi) hi = Math.min(state.future, hi + (hi - lo) / 2);
    return [lo, hi];
  }

  // Each known limit's projection as [x0, y0, x1, y1] (seconds, %), and the resets ahead.
  function projections() {
    const out = [];
    const resets = new Set();
    if (!state.forecast || !state.forecast.asOf) return { lines: out, resets: [] };
    const asOf = Date.parse(state.forecast.asOf) / 1000;
    WINDOWS.forEach((w, i) => {
      const limit = forecastFor(w.key);
      if (!limit) return;
      // From the limit's own newest reading: older than asOf for a limit held through a
      // partial scrape.
      const observed = limit.observedAt ? Date.parse(limit.observedAt) / 1000 : NaN;
      const t0 = Number.isNaN(observed) ? asOf : observed;
      const reset = limit.resetsAt ? Date.parse(limit.resetsAt) / 1000 : null;
      if (reset != null) resets.add(reset);
      const pct = limit.percentageUsed;
      const rate = limit.ratePerHour;
      if (rate == null || pct >= 100) return;
      const exhausts = limit.exhaustsAt ? Date.parse(limit.exhaustsAt) / 1000 : null;
      if (exhausts != null && (reset == null || exhausts <= reset)) {
        out.push({ series: i, line: [t0, pct, exhausts, 100] });
      } else if (reset != null && reset > t0) {
        out.push({ series: i, line: [t0, pct, reset, pct + (rate * (reset - t0)) / 3600] });
      }
    });
    return { lines: out, resets: [...resets].sort((a, b) => a - b) };
  }

  function drawForecast(u) {
    // The ends of the time axis as drawn, for anyone checking what the chart shows.
    const holder = $("chart");
    const { min, max } = u.scales.x;
    holder.dataset.xFrom = min == null ? "" : new Date(min * 1000).toISOString();
    holder.dataset.xTo = max == null ? "" : new Date(max * 1000).toISOString();
    const { lines, resets } = projections();
    const ctx = u.ctx;
    const { left, top, width, height } = u.bbox;
    const ratio = window.devicePixelRatio || 1;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    // Thinner and dash-dotted, so a projection never reads as one of the data lines; a
    // hollow ring marks where it ends (100 % or the reset).
    ctx.lineWidth = 1.5 * ratio;
    const rings = []; // [x, y] of each ring, so no reset label is drawn under one
    const ringRadius = 4 * ratio;
    lines.forEach(({ series, line }) => {
      const [x0, y0] = [u.valToPos(line[0], "x", true), u.valToPos(line[1], "y", true)];
      const [x1, y1] = [u.valToPos(line[2], "x", true), u.valToPos(line[3], "y", true)];
      ctx.strokeStyle = LINES[series].stroke;
      ctx.setLineDash([8 * ratio, 3 * ratio, 2 * ratio, 3 * ratio]);
      ctx.beginPath();
      ctx.moveTo(x0, y0);
      ctx.lineTo(x1, y1);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.beginPath();
      ctx.arc(x1, y1, ringRadius, 0, 2 * Math.PI);
      ctx.stroke();
      rings.push([x1, y1]);
    });
    ctx.strokeStyle = "#57606a";
    ctx.fillStyle = "#57606a";
    ctx.lineWidth = ratio;
    ctx.font = 11 * ratio + "px system-ui, sans-serif";
    // Set here, not inherited: the context keeps the alignment uPlot last drew with (its
    // y axis' labels end at their x), and a label ending where it should start lands
    // left of its mark, cut off at the plot's edge, while the room checked below for it
    // lies right of the mark.
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    const label = "reset";
    const labelWidth = ctx.measureText(label).width;
    const line = 12 * ratio;
    const taken = []; // [row, from, to] of each label drawn so far
    resets.forEach((t) => {
      const x = u.valToPos(t, "x", true);
      // A reset outside the axis has no mark to label: its label would stand for nothing
      // the plot shows, and push the labels of the marks it does show down a row.
      if (x < left - ratio || x > left + width + ratio) return;
      ctx.setLineDash([2 * ratio, 3 * ratio]);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      // Right of the mark, or left of it where the plot ends first (never cut off); one
      // row lower when it would run into the label of a mark close by or a projection's
      // ring (one often ends on the mark itself, at the top where the labels are).
      const right = x + 3 * ratio;
      const from = right + labelWidth <= left + width ? right : x - 3 * ratio - labelWidth;
      const to = from + labelWidth;
      const gap = 4 * ratio;
      const pad = ringRadius + ctx.lineWidth * 2;
      const clash = (row) =>
        taken.some(([r, a, b]) => r === row && from < b + gap && a < to + gap) ||
        rings.some(
          ([rx, ry]) =>
            rx + pad > from && rx - pad < to &&
            ry + pad > top + line * row && ry - pad < top + line * (row + 1) + 3 * ratio,
        );
      let row = 0;
      while (row < 20 && clash(row)) row++;
      taken.push([row, from, to]);
      ctx.fillText(label, from, top + line * (row + 1));
    });
    ctx.restore();
  }

  // The axes' font, named so the room a time label takes can be measured in it.
  const AXIS_FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';
  let labelWidths = null;

  // The widest time ("10:58 PM") and the widest day ("Wed 23 Sept") the axis writes in
  // this locale, in CSS pixels: every month and weekday, at a two-digit day and hour.
  function widths() {
    if (labelWidths === null) {
      const ctx = document.createElement("canvas").getContext("2d");
      ctx.font = AXIS_FONT;
      labelWidths = { clock: 0, day: 0 };
      for (let month = 0; month < 12; month++) {
        for (let day = 20; day < 27; day++) {
          const ms = Date.UTC(2026, month, day, 22, 58);
          labelWidths.day = Math.max(labelWidths.day, ctx.measureText(dayOnly.format(ms)).width);
          labelWidths.clock = Math.max(labelWidths.clock, ctx.measureText(clockTime.format(ms)).width);
        }
      }
    }
    return labelWidths;
  }

  // uPlot's own spacing option: the least distance between two time ticks, in CSS
  // pixels. uPlot takes the finest step of time that leaves that much, so the number of
  // ticks follows the chart's width and labels never meet, in any locale. Under steps
  // shorter than a day a tick writes a time (a day only below it, at most once a day,
  // on its own line); from a day on, it writes the day: room for the wider of the two.
  // 12 hours is the longest step under a day among uPlot's time steps.
  function timeSpace(u, axisIdx, min, max, dim) {
    const gap = 12;
    const { clock, day } = widths();
    const secondsPerPixel = (max - min) / Math.max(1, dim);
    return secondsPerPixel * (clock + gap) <= 43200 ? clock + gap : day + gap;
  }

  function makeChart(data) {
    const opts = {
      width: chartWidth(),
      height: chartHeight(),
      scales: { x: { time: true, range: xRange }, y: { range: [0, 100] } },
      axes: [
        { values: axisTimes, space: timeSpace, font: AXIS_FONT },
        { label: "% used", values: (u, ticks) => ticks.map((t) => t + " %"), size: 60, font: AXIS_FONT },
      ],
      series: [
        { label: "Time", value: (u, v) => (v == null ? "\u2013" : timeFormat.format(v * 1000)) },
        ...WINDOWS.map((w, i) => ({
          label: w.label,
          stroke: LINES[i].stroke,
          dash: LINES[i].dash,
          width: 2,
          spanGaps: false,
          points: { size: 5 },
          value: (u, v) => formatPct(v),
        })),
      ],
      // Legend markers drawn with each line's dash, so the key does not rest on colour.
      legend: { live: true, markers: { width: 2, dash: (u, i) => MARKERS[i] } },
      cursor: { focus: { prox: 16 } },
      hooks: { setCursor: [updateReadout], draw: [drawForecast] },
    };
    return new uPlot(opts, data, $("chart"));
  }

  function updateReadout(u) {
    const i = u.cursor.idx;
    if (i == null) return;
    const stamp = timeFormat.format(u.data[0][i] * 1000);
    if (state.filler.has(i)) {
      setText("readout", stamp + ": no snapshot (a gap in the data)");
      return;
    }
    const parts = WINDOWS.map((w, k) => w.label + " " + formatPct(u.data[k + 1][i]));
    setText("readout", stamp + ": " + parts.join(", "));
  }

  function drawChart() {
    const { rows, times, filler, gaps, limit, data } = chartData();
    state.filler = filler;
    const holder = $("chart");
    const { lines, resets } = projections();
    const ends = [...lines.map((p) => p.line[2]), ...resets];
    state.future = ends.length ? Math.max(...ends) : null;
    state.drawn = times.length ? [times[0], times[times.length - 1]] : [null, null];
    if (state.chart === null) {
      state.chart = makeChart(data);
    } else {
      state.chart.setData(data);
    }
    holder.dataset.points = String(rows.length);
    holder.dataset.distinctTimes = String(new Set(times).size);
    holder.dataset.first = rows.length ? new Date(times[0] * 1000).toISOString() : "";
    holder.dataset.last = rows.length ? new Date(times[rows.length - 1] * 1000).toISOString() : "";
    holder.dataset.projections = String(lines.length);
    holder.dataset.resets = String(resets.length);
    holder.dataset.gaps = String(gaps);
    const label = { "24h": "the last 24 hours", "7d": "the last 7 days", all: "all kept history" };
    let summary;
    if (rows.length === 0) {
      summary = "No snapshots in " + label[state.range] + ".";
    } else {
      const first = times[0] * 1000;
      const last = times[rows.length - 1] * 1000;
      summary =
        rows.length + (rows.length === 1 ? " snapshot" : " snapshots") + " in " +
        label[state.range] + ", " + timeFormat.format(first) + " to " + timeFormat.format(last) + ".";
      const latest = WINDOWS.map((w, k) => {
        const ys = data[k + 1].filter((v) => v != null);
        return ys.length ? w.label + " peaked at " + formatPct(Math.max(...ys)) : null;
      }).filter(Boolean);
      if (latest.length) summary += " " + latest.join("; ") + ".";
      if (gaps) {
        summary +=
          " The lines break at " + (gaps === 1 ? "1 gap" : gaps + " gaps") + " of more than " +
          duration(limit * 1000) + " without a snapshot.";
      }
    }
    if (state.skipped) summary += " " + state.skipped + " damaged version(s) not drawn.";
    if (state.ahead) {
      summary += " " + state.ahead + " snapshot(s) dated ahead of the clock not drawn.";
    }
    setText("chart-summary", summary);
  }

  // -- the loop ---------------------------------------------------------------------------

  async function tick() {
    clearTimeout(state.timer);
    if (!document.hidden) {
      // Each part goes on whatever another did: a forecast the server fails still
      // leaves the newest snapshot and the chart to show. The first failure is said.
      let problem = null;
      const attempt = async (part) => {
        try {
          return await part();
        } catch (err) {
          if (problem === null) problem = err;
          return false;
        }
      };
      const changed = await attempt(refreshLatest);
      if (changed || state.forecastTag === null) await attempt(refreshForecast);
      if (changed || state.seriesKey !== state.range) {
        await attempt(refreshSeries);
      } else if (state.chart !== null) {
        await attempt(async () => drawChart()); // the window moves on with the clock
      }
      await attempt(async () => {
        renderFreshness();
        renderCards(); // "in 41 h" and "last read 12 min ago" move on with the clock
      });
      showConnection(problem === null ? null : failureWords(problem));
    }
    state.timer = setTimeout(tick, refreshMs);
  }

  // A server that answered with an error is not an unreachable one: said as it is.
  function failureWords(err) {
    if (err instanceof ServerAnswer) return "The server " + err.message + "; retrying.";
    return "Cannot reach the server (" + err.message + "); retrying.";
  }

  function start() {
    renderZone();
    document.querySelectorAll('input[name="range"]').forEach((input) => {
      if (input.checked) state.range = input.value;
      input.addEventListener("change", () => {
        state.range = input.value;
        tick();
      });
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
    let pending = null;
    new ResizeObserver(() => {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(() => {
        if (state.chart) state.chart.setSize({ width: chartWidth(), height: chartHeight() });
      });
    }).observe($("chart"));
    // Busy while the first answer fills in (the cards grow, and push what lies below
    // them, the range picker, down), then not, whatever that answer was: a page whose
    // first look failed says so in the header and must not stay hidden as busy.
    const main = document.querySelector("main");
    main.setAttribute("aria-busy", "true");
    tick().finally(() => main.setAttribute("aria-busy", "false"));
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
