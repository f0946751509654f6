/**
 * `ferry image info PATH` and `ferry image convert SOURCE TARGET --format F`: the disk image readers and
 * writers, locally, without a server (what `qemu-img info` and `qemu-img convert` do, for the formats
 * Ferry knows: see docs/disk-formats.md).
 */
import type { Command } from 'commander';
import { CliContext } from './context.js';
import { formatBytes, printFields } from './output.js';

/** The image formats are loaded only when an image command runs: they would slow every other command's start. */
const imageFormats = () => import('../disks/formats.js');

export function registerImageCommands(program: Command): void {
  const image = program.command('image').description('disk images (raw, vhd, vhdx, vmdk, qcow2), locally');
  image
    .command('info <path>')
    .description("an image's format, virtual size and how much of it holds data")
    .action(async (imagePath: string, _options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const { openDiskImage, spansOneFile } = await imageFormats();
      const reader = await openDiskImage(imagePath);
      try {
        let dataBytes = 0;
        for await (const extent of reader.extents()) if (extent.kind === 'data') dataBytes += extent.length;
        const info = { path: imagePath, format: reader.format, subformat: reader.subformat, virtualSize: reader.size, dataBytes, oneFile: spansOneFile(reader) };
        cli.print(info, () =>
          printFields([
            ['image', imagePath],
            ['format', `${info.format} (${info.subformat})`],
            ['virtual size', `${formatBytes(info.virtualSize)} (${info.virtualSize} bytes)`],
            ['data', formatBytes(info.dataBytes)],
          ]),
        );
      } finally {
        await reader.close();
      }
    });
  image
    .command('convert <source> <target>')
    .description('convert a disk image (format of the source sniffed) to --format; the target appears complete or not at all')
    .requiredOption('--format <format>', 'raw, vhd, vhd:fixed, vhdx, vmdk (streamOptimized), qcow2, qcow2:v3-compressed')
    .action(async (source: string, target: string, options: { format: string }, command: Command) => {
      const cli = CliContext.of(command);
      const { convertImage } = await import('../disks/convert.js');
      const result = await convertImage(source, target, options.format);
      cli.print(result, () =>
        console.log(`${source} (${result.source.format} ${result.source.subformat}, ${formatBytes(result.source.size)}) -> ${target} (${result.target.format} ${result.target.subformat}, ${formatBytes(result.target.bytesOnDisk)} on disk)`),
      );
    });
}
