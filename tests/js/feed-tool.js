// JS hypercore@9 side of the feed cross-checks and benchmarks.
//
//   node feed-tool.js build --seed HEX [--dir DIR] [--batches 1,2,...]  < blocks as hex lines
//       builds a feed (in memory, or in DIR with random-access-file) from the blocks,
//       appended in batches of the given sizes (default: one at a time), and prints
//       {"key","discoveryKey","length","byteLength","treeHash","signature"}.
//   node feed-tool.js info --dir DIR        prints the same for an existing feed dir.
//   node feed-tool.js cat --dir DIR         prints each block as a hex line.
//   node feed-tool.js bench-append --count N --size S [--batch B] [--dir DIR]
//       appends N blocks of S bytes (one by one, or in batches of B) and prints
//       {"blocks","seconds","blocksPerSec"}.
'use strict'
const hypercore = require('hypercore')
const crypto = require('hypercore-crypto')
const ram = require('random-access-memory')
const raf = require('random-access-file')
const path = require('path')

function arg (name, dflt) {
  const i = process.argv.indexOf('--' + name)
  return i === -1 ? dflt : process.argv[i + 1]
}

function p (fn) {
  return new Promise((resolve, reject) => fn((err, val) => err ? reject(err) : resolve(val)))
}

function storageFor (dir) {
  if (!dir) return ram
  return (name) => raf(path.join(dir, name))
}

async function info (feed) {
  const out = {
    key: feed.key.toString('hex'),
    discoveryKey: feed.discoveryKey.toString('hex'),
    length: feed.length,
    byteLength: feed.byteLength,
    treeHash: null,
    signature: null
  }
  if (feed.length > 0) {
    const roots = await p(cb => feed.rootHashes(feed.length - 1, cb))
    out.treeHash = crypto.tree(roots).toString('hex')
    const sig = await p(cb => feed.signature(feed.length - 1, cb))
    out.signature = sig.signature.toString('hex')
  } else {
    out.treeHash = crypto.tree([]).toString('hex')
  }
  return out
}

async function readStdinLines () {
  const chunks = []
  for await (const c of process.stdin) chunks.push(c)
  return Buffer.concat(chunks).toString('utf8').split('\n').filter(l => l.length > 0 || false)
}

async function main () {
  const cmd = process.argv[2]
  if (cmd === 'build') {
    const seed = Buffer.from(arg('seed'), 'hex')
    const kp = crypto.keyPair(seed)
    const feed = hypercore(storageFor(arg('dir')), kp.publicKey, { secretKey: kp.secretKey })
    await p(cb => feed.ready(cb))
    const lines = await readStdinLines()
    const blocks = lines.map(l => Buffer.from(l === '-' ? '' : l, 'hex'))
    const batches = arg('batches') ? arg('batches').split(',').map(Number) : blocks.map(() => 1)
    let at = 0
    for (const n of batches) {
      if (at >= blocks.length) break
      await p(cb => feed.append(blocks.slice(at, at + n), cb))
      at += n
    }
    if (at < blocks.length) await p(cb => feed.append(blocks.slice(at), cb))
    console.log(JSON.stringify(await info(feed)))
    await p(cb => feed.close(cb))
  } else if (cmd === 'info') {
    const feed = hypercore(storageFor(arg('dir')))
    await p(cb => feed.ready(cb))
    console.log(JSON.stringify(await info(feed)))
    await p(cb => feed.close(cb))
  } else if (cmd === 'cat') {
    const feed = hypercore(storageFor(arg('dir')))
    await p(cb => feed.ready(cb))
    for (let i = 0; i < feed.length; i++) {
      const b = await p(cb => feed.get(i, { wait: false }, cb))
      process.stdout.write(b.toString('hex') + '\n')
    }
    await p(cb => feed.close(cb))
  } else if (cmd === 'bench-append') {
    const count = Number(arg('count', '100000'))
    const size = Number(arg('size', '1024'))
    const batch = Number(arg('batch', '1'))
    const feed = hypercore(storageFor(arg('dir')))
    await p(cb => feed.ready(cb))
    const block = Buffer.alloc(size, 7)
    const start = process.hrtime.bigint()
    for (let i = 0; i < count; i += batch) {
      const n = Math.min(batch, count - i)
      if (n === 1) await p(cb => feed.append(block, cb))
      else await p(cb => feed.append(new Array(n).fill(block), cb))
    }
    const seconds = Number(process.hrtime.bigint() - start) / 1e9
    console.log(JSON.stringify({ blocks: count, seconds, blocksPerSec: count / seconds }))
    await p(cb => feed.close(cb))
  } else {
    console.error('usage: feed-tool.js build|info|cat|bench-append ...')
    process.exit(2)
  }
}

main().catch(err => { console.error(err && err.stack || err); process.exit(1) })
