// Kontrol's kite list: a snapshot and live changes from /api/watch (Server-Sent Events),
// grouped username → environment → name → version, one row per kite.
// Every kite-provided string goes through textContent (never HTML), so a kite named
// "<script>" shows as that text.
'use strict'
;(() => {
  const LEVELS = ['user', 'environment', 'name', 'version']
  const COLUMNS = ['region', 'hostname', 'id', 'URL', 'age']
  const RECONNECT_MS = 5000 // when the browser gave up (e.g. 503: too many connections)

  const kites = new Map() // kite id → {kite, url, registeredAt}
  const collapsed = new Set() // keys of groups the user closed
  const collator = new Intl.Collator('en', { numeric: true })
  let skew = 0 // server clock − browser clock, ms
  let snapshotInfo = { total: 0, truncated: false }
  let live = false
  let source = null
  let renderTimer = null
  let retryTimer = null

  const $ = (id) => document.getElementById(id)
  const statusEl = $('status')
  const noticeEl = $('notice')
  const listEl = $('kites')
  const filterEl = $('filter')

  function el (tag, className, text) {
    const e = document.createElement(tag)
    if (className) e.className = className
    if (text !== undefined) e.textContent = text
    return e
  }

  function formatAge (ms) {
    const s = Math.max(0, Math.floor(ms / 1000))
    if (s < 60) return s + 's'
    const m = Math.floor(s / 60)
    if (m < 60) return m + 'm ' + (s % 60) + 's'
    const h = Math.floor(m / 60)
    if (h < 24) return h + 'h ' + (m % 60) + 'm'
    return Math.floor(h / 24) + 'd ' + (h % 24) + 'h'
  }

  const groupKeys = (k) => [k.username, k.environment, k.name, k.version]
  const sortKeys = (e) => [...groupKeys(e.kite), e.kite.region, e.kite.hostname, e.kite.id]

  function order (a, b) {
    const x = sortKeys(a)
    const y = sortKeys(b)
    for (let i = 0; i < x.length; i++) {
      const c = collator.compare(x[i], y[i])
      if (c !== 0) return c
    }
    return 0
  }

  function matches (e, q) {
    return sortKeys(e).some((v) => v.toLowerCase().includes(q)) || e.url.toLowerCase().includes(q)
  }

  function row (e) {
    const tr = el('tr')
    tr.dataset.id = e.kite.id
    tr.append(
      el('td', 'region', e.kite.region),
      el('td', 'hostname', e.kite.hostname),
      el('td', 'id', e.kite.id),
      el('td', 'url', e.url))
    const age = el('td', 'age', formatAge(Date.now() + skew - e.registeredAt))
    age.dataset.since = String(e.registeredAt)
    tr.append(age)
    return tr
  }

  function table () {
    const t = el('table')
    const head = el('tr')
    for (const c of COLUMNS) head.append(el('th', null, c))
    t.append(el('thead'), el('tbody'))
    t.tHead.append(head)
    return t
  }

  function group (level, path, value) {
    const key = path.join('/') // identity fields never contain '/'
    const d = el('details')
    d.dataset.group = key
    d.dataset.level = LEVELS[level]
    d.open = !collapsed.has(key)
    const summary = el('summary')
    summary.append(el('span', 'label', LEVELS[level]), el('span', 'value', value), el('span', 'count'))
    d.append(summary)
    return d
  }

  function render () {
    renderTimer = null
    const q = filterEl.value.trim().toLowerCase()
    const entries = [...kites.values()].filter((e) => !q || matches(e, q)).sort(order)
    const root = document.createDocumentFragment()
    const open = [] // open[level] = {value, node}
    let tbody = null
    for (const e of entries) {
      const keys = groupKeys(e.kite)
      let level = 0
      while (level < keys.length && open[level] && open[level].value === keys[level]) level++
      for (; level < keys.length; level++) {
        const node = group(level, keys.slice(0, level + 1), keys[level])
        ;(level === 0 ? root : open[level - 1].node).append(node)
        open[level] = { value: keys[level], node }
        if (level === keys.length - 1) {
          const t = table()
          node.append(t)
          tbody = t.tBodies[0]
        }
      }
      open.length = keys.length
      tbody.append(row(e))
    }
    for (const d of root.querySelectorAll('details')) {
      const n = d.querySelectorAll('tbody tr').length
      d.querySelector(':scope > summary > .count').textContent = n + (n === 1 ? ' kite' : ' kites')
    }
    if (entries.length === 0) {
      root.append(el('p', 'empty', kites.size === 0 ? 'No kites are registered.' : 'No kite matches the filter.'))
    }
    listEl.replaceChildren(root)
    listEl.dataset.filter = q // what this rendering shows (tests wait on it)
    updateStatus(entries.length)
  }

  function schedule () {
    if (renderTimer === null) renderTimer = setTimeout(render, 20)
  }

  function updateStatus (shown) {
    const n = kites.size
    const count = n + (n === 1 ? ' kite' : ' kites') + (shown !== undefined && shown !== n ? ' (' + shown + ' shown)' : '')
    document.title = 'Kontrol — ' + n + (n === 1 ? ' kite' : ' kites')
    if (live) {
      statusEl.dataset.state = 'live'
      statusEl.textContent = 'live — ' + count
    } else if (source && source.readyState === EventSource.CLOSED) {
      statusEl.dataset.state = 'offline'
      statusEl.textContent = 'disconnected — retrying'
    } else {
      statusEl.dataset.state = 'connecting'
      statusEl.textContent = kites.size ? 'reconnecting… (showing the last known ' + count + ')' : 'connecting…'
    }
    noticeEl.hidden = !snapshotInfo.truncated
    noticeEl.textContent = snapshotInfo.truncated
      ? 'Kontrol has ' + snapshotInfo.total + ' kites; the snapshot listed the first ' + snapshotInfo.shown + '.'
      : ''
  }

  function tickAges () {
    const now = Date.now() + skew
    for (const td of listEl.querySelectorAll('td.age')) {
      td.textContent = formatAge(now - Number(td.dataset.since))
    }
  }

  const entryOf = (c) => ({ kite: c.kite, url: c.url, registeredAt: c.registeredAt })

  function connect () {
    clearTimeout(retryTimer)
    if (source) source.close()
    live = false
    source = new EventSource('/api/watch')
    updateStatus()
    // Every (re)connection starts with a snapshot: it replaces what we knew.
    source.addEventListener('snapshot', (m) => {
      const s = JSON.parse(m.data)
      skew = s.now - Date.now()
      kites.clear()
      for (const e of s.kites) kites.set(e.kite.id, e)
      snapshotInfo = { total: s.total, truncated: s.truncated, shown: s.kites.length }
      live = true
      schedule()
    })
    source.addEventListener('register', (m) => {
      const c = JSON.parse(m.data)
      skew = c.now - Date.now()
      kites.set(c.kite.id, entryOf(c))
      schedule()
    })
    source.addEventListener('deregister', (m) => {
      const c = JSON.parse(m.data)
      skew = c.now - Date.now()
      kites.delete(c.kite.id)
      schedule()
    })
    source.onerror = () => {
      live = false
      // CONNECTING: the browser reconnects by itself (and gets a new snapshot).
      // CLOSED: it gave up (an error status); try again later.
      if (source.readyState === EventSource.CLOSED) retryTimer = setTimeout(connect, RECONNECT_MS)
      updateStatus()
    }
  }

  listEl.addEventListener('toggle', (ev) => {
    const key = ev.target.dataset && ev.target.dataset.group
    if (!key) return
    if (ev.target.open) collapsed.delete(key)
    else collapsed.add(key)
  }, true)
  filterEl.addEventListener('input', schedule)
  setInterval(tickAges, 1000)
  connect()
  render()
})()
