import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { applyMarkup, canonicalDecimal, decimalsEqual, formatDecimal, formatUsd, MAX_MICROS, MoneyError, parseMarkup, parseUsd, ratio } from '../../src/metering/money.js';

describe('parseUsd', () => {
  const good: Array<[string | number, bigint]> = [
    ['0', 0n],
    ['0.0', 0n],
    ['1', 1_000_000n],
    ['0.005', 5_000n],
    ['0.0085', 8_500n],
    ['0.000001', 1n],
    ['12.345678', 12_345_678n],
    ['0.1000000', 100_000n], // zeros past the sixth place lose nothing
    ['007.5', 7_500_000n],
    ['9223372036854.775807', MAX_MICROS],
    [0, 0n],
    [0.1, 100_000n],
    [0.005, 5_000n],
    [25, 25_000_000n],
    [1.05, 1_050_000n],
    [0.000001, 1n],
  ];
  for (const [input, micros] of good) {
    it(`${JSON.stringify(input)} → ${micros}`, () => assert.equal(parseUsd(input), micros));
  }

  const bad: Array<[string, string | number, RegExp]> = [
    ['seven decimals', '0.0000001', /more than 6 decimal places/],
    ['a float sum', 0.1 + 0.2, /more than 6 decimal places/],
    ['exponent number', 1e-7, /plain decimal/],
    ['huge exponent number', 1e21, /plain decimal/],
    ['exponent string', '1e3', /non-negative decimal/],
    ['negative', '-1', /non-negative decimal/],
    ['negative number', -0.5, /non-negative decimal/],
    ['empty', '', /non-negative decimal/],
    ['spaces', ' 1', /non-negative decimal/],
    ['comma', '1,5', /non-negative decimal/],
    ['leading dot', '.5', /non-negative decimal/],
    ['trailing dot', '5.', /non-negative decimal/],
    ['plus sign', '+1', /non-negative decimal/],
    ['hex', '0x10', /non-negative decimal/],
    ['NaN', Number.NaN, /finite/],
    ['Infinity', Number.POSITIVE_INFINITY, /finite/],
    ['beyond BIGINT', '9223372036854.775808', /at most 9223372036854\.775807/],
  ];
  for (const [name, input, message] of bad) {
    it(`refuses ${name}`, () => {
      assert.throws(() => parseUsd(input), (e: unknown) => e instanceof MoneyError && message.test(e.message));
    });
  }

  it('refuses non-string, non-number input', () => {
    assert.throws(() => parseUsd(null as unknown as string), MoneyError);
  });
});

describe('formatUsd', () => {
  const cases: Array<[bigint, string]> = [
    [0n, '0.000000'],
    [1n, '0.000001'],
    [5_250n, '0.005250'],
    [10_500n, '0.010500'],
    [1_000_000n, '1.000000'],
    [123_456_789n, '123.456789'],
    [-1n, '-0.000001'],
    [MAX_MICROS, '9223372036854.775807'],
  ];
  for (const [micros, text] of cases) {
    it(`${micros} → ${text}`, () => assert.equal(formatUsd(micros), text));
  }
  it('round-trips through parseUsd', () => {
    for (const m of [0n, 1n, 999_999n, 1_000_001n, 5_250n, MAX_MICROS]) assert.equal(parseUsd(formatUsd(m)), m);
  });
});

describe('parseMarkup', () => {
  const good: Array<[string | number, bigint, bigint]> = [
    ['1', 1n, 1n],
    ['1.0', 1n, 1n],
    ['1.05', 21n, 20n],
    ['1.333', 1333n, 1000n],
    ['0.9', 9n, 10n],
    ['2', 2n, 1n],
    [1.05, 21n, 20n],
    [1, 1n, 1n],
  ];
  for (const [input, num, den] of good) {
    it(`${JSON.stringify(input)} → ${num}/${den}`, () => assert.deepEqual(parseMarkup(input), { num, den }));
  }
  const bad: Array<[string | number, RegExp]> = [
    ['0', /greater than 0/],
    ['0.000', /greater than 0/],
    ['-1', /non-negative decimal/],
    ['1.0000001', /more than 6 decimal places/],
    ['abc', /non-negative decimal/],
    ['', /non-negative decimal/],
    [Number.NaN, /finite/],
  ];
  for (const [input, message] of bad) {
    it(`refuses ${JSON.stringify(input)}`, () => assert.throws(() => parseMarkup(input), message));
  }
});

describe('applyMarkup rounds up to a whole micro-dollar', () => {
  const cases: Array<[bigint, string, bigint]> = [
    [5_000n, '1', 5_000n],
    [5_000n, '1.05', 5_250n],
    [8_500n, '1.05', 8_925n],
    [5_000n, '1.333', 6_665n],
    [8_500n, '1.333', 11_331n], // 11330.5
    [1n, '1.05', 2n], // 1.05 → 2: never below the price
    [1n, '0.5', 1n],
    [3n, '0.5', 2n],
    [0n, '1.333', 0n],
    [10n, '1.000001', 11n],
  ];
  for (const [micros, markup, expected] of cases) {
    it(`${micros} × ${markup} → ${expected}`, () => assert.equal(applyMarkup(micros, parseMarkup(markup)), expected));
  }
  it('refuses a negative amount', () => assert.throws(() => applyMarkup(-1n, parseMarkup('1')), RangeError));
});

describe('formatDecimal', () => {
  const cases: Array<[bigint, bigint, string]> = [
    [0n, 1n, '0'],
    [2n, 1n, '2'],
    [3n, 4n, '0.75'],
    [786_432n, 1_048_576n, '0.75'],
    [1n, 1_048_576n, '0.000000953675'], // 9.5367431640625e-7, rounded up at 12 places
    [1n, 3n, '0.333333333334'],
  ];
  for (const [num, den, text] of cases) {
    it(`${num}/${den} → ${text}`, () => assert.equal(formatDecimal(ratio(num, den)), text));
  }
});

describe('canonicalDecimal', () => {
  const cases: Array<[string | number | bigint, string]> = [
    ['1', '1'],
    ['1.0', '1'],
    ['01.500', '1.5'],
    ['.5', '0.5'],
    ['5.', '5'],
    ['0.000', '0'],
    ['-0', '0'],
    ['-2.50', '-2.5'],
    ['1e0', '1'],
    ['1.25E2', '125'],
    ['12e-3', '0.012'],
    [0.1, '0.1'],
    [1e-7, '0.0000001'],
    [3n, '3'],
    [' 2.0 ', '2'],
    ['123456789012345678901234567890.000000000000000000001', '123456789012345678901234567890.000000000000000000001'],
  ];
  for (const [input, expected] of cases) {
    it(`${JSON.stringify(String(input))} → ${expected}`, () => assert.equal(canonicalDecimal(input), expected));
  }
  it('refuses what is not a decimal', () => {
    for (const bad of ['', '.', 'abc', '1.2.3', '0x10', 'NaN', '1e99999']) assert.throws(() => canonicalDecimal(bad), RangeError, bad);
    assert.throws(() => canonicalDecimal(Number.POSITIVE_INFINITY), RangeError);
  });
  it('compares numerically', () => {
    assert.ok(decimalsEqual('1', '1.0'));
    assert.ok(!decimalsEqual('1', '1.0000001'));
  });
});
