/**
 * CRC-32C (Castagnoli), the checksum of VHDX headers, region tables and log entries (MS-VHDX 2.2.2,
 * 2.2.3.1, 2.3.1.1). node:zlib only offers the IEEE polynomial, so this is a small table-driven
 * implementation: reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF (the
 * standard CRC-32C, check value 0xE3069283 for "123456789").
 *
 * It runs a byte at a time, which is plenty for what VHDX checksums: 4 KiB headers and 64 KiB tables.
 */

/** The reflected Castagnoli polynomial. */
const CASTAGNOLI_REFLECTED = 0x82f63b78;

/** crcTable[byte] is the CRC register after shifting `byte` through eight rounds of the polynomial. */
const crcTable: Uint32Array = (() => {
  const table = new Uint32Array(256);
  for (let byte = 0; byte < 256; byte++) {
    let register = byte;
    for (let bit = 0; bit < 8; bit++) register = register & 1 ? (register >>> 1) ^ CASTAGNOLI_REFLECTED : register >>> 1;
    table[byte] = register >>> 0;
  }
  return table;
})();

/**
 * The CRC-32C of `data`, as an unsigned 32-bit number. To checksum data given in parts, pass the
 * result for the earlier parts as `previous`: crc32c(b, crc32c(a)) === crc32c(a ++ b).
 */
export function crc32c(data: Uint8Array, previous = 0): number {
  let register = ~previous >>> 0;
  for (let index = 0; index < data.length; index++) {
    register = crcTable[(register ^ data[index]!) & 0xff]! ^ (register >>> 8);
  }
  return ~register >>> 0;
}
